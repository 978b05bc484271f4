"""Hyperparameter sweeps: trials trained many at a time and selected on validation accuracy.

  python main.py --mode=sweep --config=configs/sweep.py --workdir=runs/sweep

A sweep config is a training config (the base) with a `sweep` section: `grid` maps fields to
values tried in every combination; `random` maps fields to distributions, `num_random` draws of
which are each combined with every grid point. Trials that differ only in TRACED_FIELDS train
together, up to `max_parallel` at a time: one compiled program, jax.vmap over their parameters
and optimizer states, the same batches for all.

Trials train without checkpoints or pictures, all on the split of the base's data_seed, and
are ranked by final validation accuracy; test accuracy is recorded, never used to select. The
workdir gets sweep.jsonl (a record per finished trial; a re-run skips those), sweep.md (the
table, best first) and best_config.py (the winner as a config file, ready to train).
"""

import collections
import functools
import hashlib
import itertools
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

import input_pipeline
from configs import default
from mlp import build, configuration, steps
from mlp.errors import UserError

RESULTS_FILE = 'sweep.jsonl'
TABLE_FILE = 'sweep.md'
BEST_CONFIG_FILE = 'best_config.py'
# Values inside the compiled program (parameters, optimizer state, the model's rates): trials
# that differ only in these train together.
TRACED_FIELDS = ('learning_rate', 'seed', 'weight_decay', 'dropout_rate', 'label_smoothing')
RATE_FIELDS = ('dropout_rate', 'label_smoothing')  # The traced leaves of steps.Model.
# The split: every trial is scored on the same validation examples.
DATA_FIELDS = ('dataset', 'data_dir', 'validation_fraction', 'data_seed')
# Fields that change neither a trial's results nor its identity.
EXECUTION_FIELDS = configuration.RESUMABLE_FIELDS - {'num_epochs'}
DISTRIBUTIONS = ('choice', 'uniform', 'log_uniform')


def expand(search: dict) -> list[dict]:
  """Every trial's overrides: each grid combination, with each of num_random random draws.

  The draws depend only on search['seed'], so the same config gives the same trials.
  """
  grid = search['grid']
  points = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
  if not search['random']:
    return points
  rng = np.random.default_rng(search['seed'])
  draws = [
    {field: _draw(rng, field, spec) for field, spec in sorted(search['random'].items())}
    for _ in range(search['num_random'])
  ]
  return [{**point, **draw} for draw in draws for point in points]


def _draw(rng: np.random.Generator, field: str, spec):
  """One sample of ('choice', a, b, ...), ('uniform', lo, hi) or ('log_uniform', lo, hi).

  Integer bounds give integers; floats keep 4 significant digits, for readable configs.
  """
  kind, *args = spec
  if kind == 'choice':
    return args[rng.integers(len(args))]
  if kind not in DISTRIBUTIONS or len(args) != 2:
    raise UserError(f'sweep.random.{field}={spec!r}: expected one of {DISTRIBUTIONS} and bounds.')
  low, high = args
  if kind == 'uniform':
    value = rng.uniform(low, high)
  else:
    value = np.exp(rng.uniform(np.log(low), np.log(high)))
  if isinstance(low, int) and isinstance(high, int):
    return round(value)
  return float(f'{value:.4g}')


def make_config(values: dict) -> ml_collections.ConfigDict:
  """A locked training config: the defaults updated with values."""
  config = default.get_config()
  try:
    config.update(values)
  except (TypeError, ValueError) as error:
    raise UserError(f'Invalid sweep value: {error}') from None
  config.lock()
  return config


def trial_id(config: ml_collections.ConfigDict) -> str:
  """A short hash of the fields that decide a trial's results: its key in sweep.jsonl."""
  values = {key: config[key] for key in config if key not in EXECUTION_FIELDS}
  return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]


def program_key(config: ml_collections.ConfigDict) -> str:
  """Trials with equal keys differ only in traced values, so they share a compiled program."""
  values = {key: config[key] for key in config if key not in TRACED_FIELDS}
  values['adamw'] = config.weight_decay > 0  # AdamW's state has one more hyperparameter.
  return json.dumps(values, sort_keys=True)


def init_trials(
  configs: list[ml_collections.ConfigDict], steps_per_epoch: int
) -> tuple[steps.Model, dict, steps.TrainState]:
  """The model the trials share, their differing rates (trial, ) and their stacked states."""
  built = [build.build_model(config, steps_per_epoch) for config in configs]
  rates = {
    field: jnp.array([config[field] for config in configs], jnp.float32)
    for field in RATE_FIELDS
    if len({config[field] for config in configs}) > 1
  }
  states = [
    build.init_state(c, *model_params) for c, model_params in zip(configs, built, strict=True)
  ]
  return built[0][0], rates, jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def trial_programs(model: steps.Model, num_trials: int):
  """steps.train_on_indices and steps.evaluate, jitted over a leading axis of trials.

  train(rates, states, images, labels, indices, mask) and evaluate(params, images, labels,
  mask) map axis 0 of rates, states and params (jax.vmap); the data and the batch order are
  shared. A lone trial runs without vmap: XLA's batched matmuls are slower than plain ones.
  """

  def train(rates, state, images, labels, indices, mask):
    return steps.train_on_indices(model.replace(**rates), state, images, labels, indices, mask)

  evaluate = functools.partial(steps.evaluate, model)
  if num_trials == 1:
    train, evaluate = _squeezed(train, 2), _squeezed(evaluate, 1)
  else:
    train = jax.vmap(train, in_axes=(0, 0, None, None, None, None))
    evaluate = jax.vmap(evaluate, in_axes=(0, None, None, None))
  return jax.jit(train, donate_argnums=1), jax.jit(evaluate)


def _squeezed(fn, num_mapped: int):
  """fn on a trial axis of size 1 of its first num_mapped arguments and of its outputs."""

  def run(*args):
    args = [*jax.tree.map(lambda x: x[0], args[:num_mapped]), *args[num_mapped:]]
    return jax.tree.map(lambda x: x[None], fn(*args))

  return run


def _metrics(sums: steps.Sums, prefix: str) -> list[dict]:
  """Per-trial mean loss and accuracy from sums of shape (trials,)."""
  loss, correct, count = (np.asarray(x, np.float64) for x in jax.device_get(sums))
  return [
    {f'{prefix}loss': float(total / n), f'{prefix}accuracy': float(right / n)}
    for total, right, n in zip(loss, correct, count, strict=True)
  ]


def train_trials(configs: list[ml_collections.ConfigDict], splits: input_pipeline.Splits):
  """Trains trials that share a program key, all at once; returns their metrics in order."""
  config = configs[0]
  start = time.perf_counter()
  steps_per_epoch = -(-len(splits.train) // config.batch_size)
  model, rates, states = init_trials(configs, steps_per_epoch)
  train, evaluate = trial_programs(model, len(configs))
  images, labels = jax.device_put((splits.train.images, splits.train.labels))
  validation, test = (
    jax.device_put(input_pipeline.padded_batches(split, config.eval_batch_size))
    for split in (splits.validation, splits.test)
  )
  val_accuracies = []
  for epoch in range(1, config.num_epochs + 1):
    indices, mask = input_pipeline.epoch_order(
      len(splits.train), config.batch_size, config.data_seed, epoch
    )
    states, train_sums = train(rates, states, images, labels, indices, mask)
    val = _metrics(evaluate(states.params, *validation), 'val_')
    val_accuracies.append([m['val_accuracy'] for m in val])
    logging.info(
      '%d trials, epoch %d/%d, %.1fs: best val_accuracy %.4f',
      len(configs),
      epoch,
      config.num_epochs,
      time.perf_counter() - start,
      np.nanmax(val_accuracies[-1]),
    )
  test_metrics = _metrics(evaluate(states.params, *test), 'test_')
  seconds = time.perf_counter() - start
  return [
    {
      **train_m,
      **val_m,
      **test_m,
      'val_accuracy_per_epoch': [epoch[i] for epoch in val_accuracies],
      'program_seconds': seconds,
      'trials_in_program': len(configs),
    }
    for i, (train_m, val_m, test_m) in enumerate(
      zip(_metrics(train_sums, 'train_'), val, test_metrics, strict=True)
    )
  ]


def rank(records: list[dict]) -> list[dict]:
  """Best first: highest validation accuracy, then lowest validation loss; diverged trials last.

  Test metrics are never read.
  """
  return sorted(
    records, key=lambda r: (not np.isfinite(r['val_loss']), -r['val_accuracy'], r['val_loss'])
  )


def select_best(records: list[dict]) -> dict:
  best = rank(records)[0]
  if not np.isfinite(best['val_loss']):
    raise UserError('Every trial diverged (non-finite validation loss); lower learning_rate.')
  return best


def _cell(value) -> str:
  return f'{value:.4g}' if isinstance(value, float) else str(value)


def write_table(records: list[dict], fields: list[str], path: Path) -> None:
  """A markdown table, best validation accuracy first."""
  header = ['rank', 'val accuracy', 'val loss', *fields, 'test accuracy', 'seconds', 'id']
  rows = [
    [
      str(rank),
      f'{r["val_accuracy"]:.4f}',
      f'{r["val_loss"]:.4f}',
      *(_cell(r['overrides'][f]) for f in fields),
      f'{r["test_accuracy"]:.4f}',
      f'{r["program_seconds"] / r["trials_in_program"]:.0f}',
      r['id'],
    ]
    for rank, r in enumerate(rank(records), 1)
  ]
  lines = [
    f'{len(records)} trials ranked by final validation accuracy. Test accuracy is for',
    'reference only, never used to select; seconds: the program time over its trials.',
    '',
    '| ' + ' | '.join(header) + ' |',
    '|' + '---|' * len(header),
    *('| ' + ' | '.join(row) + ' |' for row in rows),
  ]
  path.write_text('\n'.join(lines) + '\n')


CONFIG_TEMPLATE = '''"""Best trial {id} of the sweep in {workdir}.

Validation accuracy {val_accuracy:.4f} (selected on validation only).
Written by python main.py --mode=sweep; train it with:
  python main.py --config={path}
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
{assignments}  return config
'''


def write_config(config: ml_collections.ConfigDict, record: dict, path: Path) -> None:
  """The config as a file that overrides configs/default.py, with its sweep result."""
  defaults = default.get_config()
  assignments = ''.join(
    f'  config.{key} = {config[key]!r}\n' for key in config if config[key] != defaults[key]
  )
  path.write_text(
    CONFIG_TEMPLATE.format(**record, workdir=path.parent, path=path, assignments=assignments)
  )


def _read_records(path: Path) -> dict[str, dict]:
  if not path.exists():
    return {}
  records = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
  return {record['id']: record for record in records}


def _write_records(path: Path, records: dict[str, dict]) -> None:
  """Rewrites the file atomically, so a killed sweep leaves only whole records."""
  partial = path.with_suffix('.tmp')
  partial.write_text(''.join(json.dumps(r) + '\n' for r in records.values()))
  partial.replace(path)


def _check(search: dict, base: ml_collections.ConfigDict) -> None:
  for field in (*search['grid'], *search['random']):
    if field not in base:
      raise UserError(f'The sweep searches {field!r}, which is not a config field.')
    if field in DATA_FIELDS:
      raise UserError(f'The sweep cannot search {field!r}: all trials must share one split.')
  if search['random'] and search['num_random'] < 1:
    raise UserError('sweep.random needs sweep.num_random >= 1.')
  if search['max_parallel'] < 1:
    raise UserError('sweep.max_parallel must be 1 or more.')


def _batches(trials: dict, records: dict, max_parallel: int) -> list[list[str]]:
  """The unfinished trials' ids, grouped by program key in batches of at most max_parallel."""
  pending = collections.defaultdict(list)
  for key, (trial, _) in trials.items():
    if key not in records:
      pending[program_key(trial)].append(key)
  return [
    keys[i : i + max_parallel]
    for keys in pending.values()
    for i in range(0, len(keys), max_parallel)
  ]


def run(config: ml_collections.ConfigDict | None, workdir: str | Path | None = None) -> dict:
  """Trains the sweep's trials not yet in workdir, writes the results; returns the best record."""
  if config is None or 'sweep' not in config:
    raise UserError('--mode=sweep needs a config with a sweep section: --config=configs/sweep.py.')
  values = config.to_dict()
  search = values.pop('sweep')
  base = make_config(values)
  _check(search, base)
  trials = {}
  for overrides in expand(search):
    trial = make_config({**values, **overrides})
    configuration.validate(trial)
    trials.setdefault(trial_id(trial), (trial, overrides))

  workdir = Path(workdir or Path('runs') / f'sweep-{time.strftime("%Y%m%d-%H%M%S")}')
  workdir.mkdir(parents=True, exist_ok=True)
  results = workdir / RESULTS_FILE
  records = _read_records(results)
  batches = _batches(trials, records, search['max_parallel'])
  logging.info(
    'Sweep in %s: %d trials, %d done, %d programs to train.',
    workdir,
    len(trials),
    len(trials) - sum(map(len, batches)),
    len(batches),
  )
  splits = input_pipeline.load_splits(base) if batches else None
  for number, keys in enumerate(batches, 1):
    logging.info('Program %d/%d: %d trials.', number, len(batches), len(keys))
    metrics = train_trials([trials[key][0] for key in keys], splits)
    for key, trial_metrics in zip(keys, metrics, strict=True):
      records[key] = {'id': key, 'overrides': trials[key][1], **trial_metrics}
    _write_records(results, records)

  current = [records[key] for key in trials]
  write_table(current, sorted({f for _, o in trials.values() for f in o}), workdir / TABLE_FILE)
  best = select_best(current)
  write_config(trials[best['id']][0], best, workdir / BEST_CONFIG_FILE)
  logging.info(
    'Best of %d trials: %s, val_accuracy %.4f; wrote %s.',
    len(current),
    best['overrides'],
    best['val_accuracy'],
    workdir / BEST_CONFIG_FILE,
  )
  return best


def throughput(
  config: ml_collections.ConfigDict, num_models: int, num_steps: int = 100, repeats: int = 5
) -> float:
  """Steady-state model-examples/s of num_models trials of config trained at once.

  The trials differ in seed; they train on num_steps shared batches of random images in one
  call, in the sweep's program (vmapped for several, plain steps.train_on_indices for one).
  The median of `repeats` timed calls; the first, compiling, call is not timed.
  """
  rng = np.random.default_rng(0)
  num_examples = num_steps * config.batch_size
  images = jnp.asarray(rng.integers(0, 256, (num_examples, 28, 28, 1), np.uint8))
  labels = jnp.asarray(rng.integers(0, 10, num_examples, np.int32))
  indices, mask = input_pipeline.epoch_order(num_examples, config.batch_size, 0, 0)
  configs = [make_config({**config.to_dict(), 'seed': seed}) for seed in range(num_models)]
  model, rates, states = init_trials(configs, num_steps)
  train = functools.partial(trial_programs(model, num_models)[0], rates)
  seconds = []
  for _ in range(repeats + 1):
    start = time.perf_counter()
    states, sums = train(states, images, labels, indices, mask)
    jax.block_until_ready(sums)
    seconds.append(time.perf_counter() - start)
  return num_models * num_examples / float(np.median(seconds[1:]))
