"""The config schema, every field once with its role and check; building and checking configs.

A config is an ml_collections.ConfigDict of groups: `data`, `optim`, `augment`, `outliers`,
`run` (declared in mlp/machinery/run_fields.py), one per registered model and, at the top,
`model` and `seed`; configs/default.py sets them all. Tools add groups of their own
(mlp/tools/fields.py), never saved with a run. A field's Role (mlp/core/fields.py) says what a
resume may change and what a sweep may vary.
"""

import functools
from typing import Any

import ml_collections
from ml_collections import config_dict

from input_pipeline.errors import UserError
from mlp.core import models, outliers
from mlp.core.fields import Field, Role, at_least, choice, fraction, positive, seed
from mlp.core.optimizer import OPTIMIZERS, SCHEDULES
from mlp.machinery import run_fields

_TOP = {
  'model': Field(
    'mlp',
    Role.RESULT,
    'The network, by its name in mlp/core/models (its fields are the group of that name).',
    lambda name: name in models.REGISTRY,
    f'one of {", ".join(models.REGISTRY)}',
  ),
  'seed': seed(Role.TRACED, 'Parameter initialisation, dropout and distortions.'),
}
_DATA = {
  'name': Field(
    'mnist',
    Role.SPLIT,
    'A tfds image-classification dataset that fits in memory: mnist, fashion_mnist, kmnist,'
    " emnist/digits, cifar10, ...; optionally with a version ('mnist:3.0.1').",
  ),
  'dir': Field(None, Role.EXECUTION, 'tfds data directory; None: TFDS_DATA_DIR or ~.', kind=str),
  'validation_fraction': fraction(
    0.1, Role.SPLIT, 'Share of the train split held out, fixed by data.seed.', closed=False
  ),
  'seed': seed(Role.SPLIT, 'Picks the validation split and every epoch training order.'),
}
_OPTIM = {
  'optimizer': choice(
    'adam',
    OPTIMIZERS,
    Role.RESULT,
    "Update rule; 'adam' with weight_decay > 0 decays as AdamW does.",
    same_as_before=True,
  ),
  'batch_size': positive(100, Role.RESULT, 'Global batch; must divide over the devices.'),
  'num_epochs': positive(
    10.0, Role.LENGTH, 'Epochs to train, a fraction allowed; a resume may raise it.'
  ),
  'learning_rate': positive(1e-3, Role.TRACED, 'Step size (the peak of a schedule).'),
  'beta1': fraction(
    0.9, Role.RESULT, 'Decay of the first moment (adam, adamw, lion).', same_as_before=True
  ),
  'beta2': fraction(
    0.999, Role.RESULT, 'Decay of the second moment (adam, adamw, lion).', same_as_before=True
  ),
  'momentum': fraction(0.9, Role.RESULT, "sgd's momentum; 0: plain SGD.", same_as_before=True),
  'nesterov': Field(False, Role.RESULT, "sgd: Nesterov's momentum.", same_as_before=True),
  'weight_decay': at_least(
    0.0, 0.0, Role.TRACED, 'Decoupled decay of weight matrices (biases are not decayed).'
  ),
  'schedule': choice(
    'constant',
    SCHEDULES,
    Role.RESULT,
    'Learning-rate shape after warm-up: constant, cosine to 0, or onecycle (cosine up, then down).',
  ),
  'warmup_epochs': at_least(0.0, 0.0, Role.RESULT, 'Linear warm-up from 0 (onecycle: its rise).'),
  'label_smoothing': fraction(0.0, Role.TRACED, 'Share of each target spread over all classes.'),
  'clip_grad_norm': at_least(
    0.0, 0.0, Role.RESULT, 'Clips the global gradient norm to this; 0: off.', same_as_before=True
  ),
  'accumulate_steps': positive(
    1, Role.RESULT, 'Batches whose mean gradient makes one update; 1: off.', same_as_before=True
  ),
  'ema_decay': fraction(
    0.0,
    Role.RESULT,
    'Evaluate an average of the weights; 0: off (0.999: typical).',
    same_as_before=True,
  ),
}
# Random distortions of training images on the device (mlp/core/augment.py), each drawn in [-x, x]
# per image; all 0: none, as in the notebook.
_AUGMENT = {
  'rotation': at_least(0.0, 0.0, Role.RESULT, 'Degrees.'),
  'scale': fraction(0.0, Role.RESULT, 'Relative change of each axis size.'),
  'shear': at_least(0.0, 0.0, Role.RESULT, 'Degrees.'),
  'translation': at_least(0.0, 0.0, Role.RESULT, 'Pixels along each axis.'),
  'elastic_alpha': at_least(0.0, 0.0, Role.RESULT, 'Elastic displacement in pixels (Simard: 34).'),
  'elastic_sigma': positive(4.0, Role.RESULT, 'Smoothness of the elastic field in pixels.'),
  # For a reader of coarse scans and other pens; runs saved before them had them off.
  'low_resolution': fraction(
    0.0, Role.RESULT, 'Share seen at a side in [7, 28] px and back.', same_as_before=True
  ),
  'blur': at_least(
    0.0, 0.0, Role.RESULT, 'Gaussian blur: sigma in [0, blur] pixels.', same_as_before=True
  ),
  'stroke_width': fraction(
    0.0, Role.RESULT, 'Share with strokes a pixel thicker or thinner.', same_as_before=True
  ),
}
GROUPS: dict[str, dict[str, Field]] = {
  '': _TOP,
  'data': _DATA,
  'optim': _OPTIM,
  'augment': _AUGMENT,
  'outliers': outliers.FIELDS,
  'run': run_fields.FIELDS,
  **{name: model.FIELDS for name, model in models.REGISTRY.items()},
}
# Every field by its dotted path: 'optim.batch_size', 'mlp.hidden_sizes', 'seed'.
SCHEMA: dict[str, Field] = {
  f'{group}.{name}'.lstrip('.'): field
  for group, fields in GROUPS.items()
  for name, field in fields.items()
}


def defaults(tool_groups: dict[str, dict[str, Field]] | None = None) -> ml_collections.ConfigDict:
  """Every field at its default (the notebook's values), locked so that a typo is an error.

  tool_groups adds groups that tools read (the benchmark's), outside the saved schema.
  """
  values: dict[str, Any] = {}
  tool_fields = {
    f'{group}.{name}': field
    for group, fields in (tool_groups or {}).items()
    for name, field in fields.items()
  }
  for path, field in (SCHEMA | tool_fields).items():
    *groups, name = path.split('.')
    node = functools.reduce(lambda d, g: d.setdefault(g, {}), groups, values)
    node[name] = config_dict.placeholder(field.kind) if field.default is None else field.default
  config = ml_collections.ConfigDict(values)
  config.lock()
  return config


def get(config: ml_collections.ConfigDict, path: str) -> Any:
  return functools.reduce(getattr, path.split('.'), config)


def assign(config: ml_collections.ConfigDict, path: str, value: Any) -> None:
  """Sets the field at a dotted path; a value of the wrong type is a UserError."""
  *groups, name = path.split('.')
  try:
    current = get(config, path)
  except AttributeError:
    raise UserError(f'{path!r} is not a config field.') from None
  if isinstance(current, tuple) and isinstance(value, list):
    value = tuple(value)
  try:
    setattr(functools.reduce(getattr, groups, config), name, value)
  except (TypeError, ValueError) as error:
    raise UserError(f'Invalid value for {path}: {error}') from None


def in_use(config: ml_collections.ConfigDict) -> list[str]:
  """The paths that affect a run of config: every group but the unselected models'."""
  unused = set(models.REGISTRY) - {config.model}
  return [path for path in SCHEMA if path.partition('.')[0] not in unused]


def with_role(config: ml_collections.ConfigDict, *roles: Role) -> list[str]:
  return [path for path in in_use(config) if SCHEMA[path].role in roles]


def check(config: ml_collections.ConfigDict, fields: dict[str, Field]) -> None:
  """Raises UserError naming the first of fields (by dotted path) whose value cannot work."""
  for path, field in fields.items():
    value = get(config, path)
    if value is not None and not field.valid(value):
      raise UserError(f'Invalid config: {path}={value!r}: expected {field.expected}.')


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises UserError naming the first field of a training run whose value cannot work."""
  check(config, {path: SCHEMA[path] for path in in_use(config)})
  cosine = config.optim.schedule == 'cosine'  # Its decay needs at least one step after warm-up.
  if config.optim.warmup_epochs > config.optim.num_epochs or (
    cosine and config.optim.warmup_epochs >= config.optim.num_epochs
  ):
    bound = 'below' if cosine else 'at most'
    raise UserError(
      f'Invalid config: optim.warmup_epochs={config.optim.warmup_epochs!r}: expected {bound} '
      f'optim.num_epochs ({config.optim.num_epochs:g}).'
    )
