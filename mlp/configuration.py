"""Configs as data: checking their values, saving them into a workdir and reading them back."""

import json
from pathlib import Path

import jax
import ml_collections

from configs import default
from mlp.errors import UserError
from mlp.optimizer import SCHEDULES

CONFIG_FILE = 'config.json'
# Fields a resumed run may change: they alter neither the train state nor the results.
RESUMABLE_FIELDS = frozenset(
  {
    'num_epochs',
    'data_dir',
    'cache_dir',
    'compilation_cache',
    'placement',
    'steps_per_call',
    'eval_batch_size',
    'matmul_precision',
    'checkpoint_every_epochs',
    'keep_checkpoints',
    'benchmark_repeats',
    'profile',
    'benchmark_batch_sizes',
    'benchmark_models',
    'benchmark_compare',
  }
)
CHOICES = {
  'placement': ('device', 'host'),
  'compute_dtype': ('float32', 'bfloat16'),
  'matmul_precision': ('default', 'high', 'highest'),
  'schedule': SCHEDULES,
}


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises UserError naming the first field whose value cannot work."""

  def require(ok: bool, field: str, why: str) -> None:
    if not ok:
      raise UserError(f'Invalid config: {field}={config[field]!r}: {why}.')

  for field, choices in CHOICES.items():
    require(config[field] in choices, field, f'expected one of {", ".join(choices)}')
  require(0.0 < config.validation_fraction < 1.0, 'validation_fraction', 'expected in (0, 1)')
  for field in ('batch_size', 'eval_batch_size', 'num_epochs', 'shuffle_buffer_size'):
    require(config[field] >= 1, field, 'expected a positive integer')
  require(
    config.checkpoint_every_epochs >= 0, 'checkpoint_every_epochs', 'expected 0 (off) or more'
  )
  require(config.benchmark_repeats >= 1, 'benchmark_repeats', 'expected 1 or more')
  require(config.keep_checkpoints >= 1, 'keep_checkpoints', 'expected 1 or more')
  require(config.steps_per_call >= 0, 'steps_per_call', 'expected 0 (whole epoch) or more')
  require(config.learning_rate > 0, 'learning_rate', 'expected a positive number')
  require(0.0 <= config.dropout_rate < 1.0, 'dropout_rate', 'expected in [0, 1)')
  require(0.0 <= config.label_smoothing < 1.0, 'label_smoothing', 'expected in [0, 1)')
  require(config.weight_decay >= 0, 'weight_decay', 'expected 0 (plain Adam) or more')
  require(
    0 <= config.warmup_epochs <= config.num_epochs, 'warmup_epochs', 'expected in [0, num_epochs]'
  )
  for name in ('rotation', 'shear', 'translation', 'elastic_alpha'):
    require(config[f'augment_{name}'] >= 0, f'augment_{name}', 'expected 0 (off) or more')
  require(0 <= config.augment_scale < 1, 'augment_scale', 'expected in [0, 1)')
  require(config.augment_elastic_sigma > 0, 'augment_elastic_sigma', 'expected a positive number')
  require(
    len(config.hidden_sizes) >= 1 and all(int(n) >= 1 for n in config.hidden_sizes),
    'hidden_sizes',
    'expected one or more positive widths',
  )
  require(
    callable(getattr(jax.nn, config.activation, None)),
    'activation',
    'expected the name of a jax.nn function such as relu, gelu or tanh',
  )


def save(config: ml_collections.ConfigDict, workdir: Path) -> None:
  """Writes the resolved config, from which later modes rebuild the model; atomically."""
  partial = Path(workdir) / f'{CONFIG_FILE}.tmp'
  partial.write_text(config.to_json(indent=2) + '\n')
  partial.replace(Path(workdir) / CONFIG_FILE)


def load(workdir: Path) -> ml_collections.ConfigDict:
  """The config a workdir was trained with; fields it predates keep their defaults."""
  path = Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise UserError(f'{path} does not exist; train into this workdir first.')
  try:
    values = json.loads(path.read_text())
  except json.JSONDecodeError as error:
    raise UserError(f'{path} is not valid JSON ({error}).') from None
  values['hidden_sizes'] = tuple(values['hidden_sizes'])
  config = default.get_config()
  unknown = sorted(set(values) - set(config))
  if unknown:
    raise UserError(f'{path} has fields this code does not know: {", ".join(unknown)}.')
  config.update(values)
  return config


def resume_conflicts(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> str:
  """The fields, other than RESUMABLE_FIELDS, on which two configs differ, as 'a: x -> y'.

  A cosine schedule's length is num_epochs, so there it is not resumable.
  """
  resumable = RESUMABLE_FIELDS - ({'num_epochs'} if config.schedule == 'cosine' else set())
  changed = [
    f'{key}: {saved[key]!r} -> {config[key]!r}'
    for key in config
    if key not in resumable and key in saved and saved[key] != config[key]
  ]
  return ', '.join(changed)
