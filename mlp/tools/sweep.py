"""Hyperparameter sweeps: trials trained many at a time and selected on validation accuracy.

  python main.py --mode=sweep --config=configs/sweep.py --workdir=runs/sweep

A sweep config is a training config (the base) with a `sweep` section: `grid` maps fields to
values tried in every combination; `random` maps fields to distributions, `num_random` draws of
which are each combined with every grid point; both nest as the config does
({'optim': {'learning_rate': ...}}). Trials that differ only in Role.TRACED fields
(mlp/core/fields.py) train together, up to `max_parallel` at a time: one compiled program, jax.vmap
over their parameters and optimizer states, the same batches for all.

Trials train without checkpoints or pictures, all on the split of the base's data.seed, with
the training loop's epochs (mesh, placement and steps_per_call as in a normal run), and are
ranked by final validation accuracy; test accuracy is recorded, never used to select. The
workdir gets sweep.jsonl (a record per finished trial; a re-run skips those), sweep.md (the
table, best first) and best_config.py (the winner as a config file, ready to train).
"""

import collections
import dataclasses
import hashlib
import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

import input_pipeline
from input_pipeline.errors import UserError
from mlp.core import build, configuration, metrics, steps, trainer
from mlp.core.fields import Role
from mlp.machinery import devices, files, lock
from mlp.tools import fields

RESULTS_FILE = 'sweep.jsonl'
TABLE_FILE = 'sweep.md'
BEST_CONFIG_FILE = 'best_config.py'
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


def make_config(
  base: ml_collections.ConfigDict, overrides: dict[str, object]
) -> ml_collections.ConfigDict:
  """A copy of base with overrides by dotted path ('optim.learning_rate': 3e-3)."""
  config = base.copy_and_resolve_references()
  for path, value in overrides.items():
    configuration.assign(config, path, value)
  config.lock()
  return config


def trial_id(config: ml_collections.ConfigDict) -> str:
  """A short hash of the fields that decide a trial's results: its key in sweep.jsonl."""
  paths = configuration.with_role(config, Role.RESULT, Role.TRACED, Role.SPLIT, Role.LENGTH)
  values = {path: configuration.get(config, path) for path in paths}
  return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]


def program_key(config: ml_collections.ConfigDict) -> str:
  """Trials with equal keys differ only in traced values, so they share a compiled program."""
  paths = configuration.with_role(config, Role.RESULT, Role.SPLIT, Role.LENGTH, Role.EXECUTION)
  values = {path: configuration.get(config, path) for path in paths}
  values['adamw'] = config.optim.weight_decay > 0  # AdamW's state has one more hyperparameter.
  return json.dumps(values, sort_keys=True)


# Told after each epoch which trials are still training (their indices in the list given to
# train_trials) and their validation accuracies; says for each whether it goes on.
EpochCallback = Callable[[int, list[int], list[float]], list[bool]]


def train_epoch(tr: trainer.Trainer, state, epoch: int):
  """Trains epoch (from 1) in calls of tr.steps_per_call steps; its metric sums."""
  total = metrics.zero_sums()
  first = (epoch - 1) * tr.steps_per_epoch
  for step in range(first, first + tr.steps_per_epoch, tr.steps_per_call):
    count = min(tr.steps_per_call, first + tr.steps_per_epoch - step)
    state, sums = trainer.train_steps(tr, state, step, count)
    total = metrics.add(total, sums)
  return state, total


def init_trials(configs: list[ml_collections.ConfigDict], info, steps_per_epoch: int):
  """The model the trials share, their traced values (trial,) and their states stacked on axis 0.

  A lone trial trains without a trial axis (values None): XLA's batched matmuls are slower than
  plain ones.
  """
  built = [build.build_model(config, info, steps_per_epoch) for config in configs]
  states = [build.init_state(c, *mv) for c, mv in zip(configs, built, strict=True)]
  model = built[0][0]
  if len(configs) == 1:
    return model, None, states[0]
  values = {
    'network_rates': {
      name: jnp.array([m.network_rates[name] for m, _ in built], jnp.float32)
      for name in model.network_rates
    },
    'label_smoothing': jnp.array([m.label_smoothing for m, _ in built], jnp.float32),
  }
  return model, values, jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def trial_programs(model: steps.Model, values: dict | None, mesh) -> trainer.Programs:
  """The trainer's programs, each step function vmapped over the trials' values and states."""
  if values is None:
    return trainer.compile_programs(model, mesh)

  def over_trials(function):
    def run(state, *data):
      return jax.vmap(lambda v, s: function(model.replace(**v), s, *data))(values, state)

    return run

  return trainer.compile_programs(model, mesh, over_trials)


def _per_trial(sums, prefix: str, values: dict | None, last_batch=None) -> list[dict]:
  if values is None:
    return [metrics.summarize(sums, prefix, last_batch)]
  count = len(values['label_smoothing'])
  pick = lambda tree, i: jax.tree.map(lambda x: x[i], tree)  # noqa: E731
  return [
    metrics.summarize(pick(sums, i), prefix, last_batch and pick(last_batch, i))
    for i in range(count)
  ]


def train_trials(
  configs: list[ml_collections.ConfigDict],
  splits: input_pipeline.Splits,
  on_epoch: EpochCallback | None = None,
):
  """Trains trials that share a program key at once, epoch by epoch; their metrics.

  A trial whose training loss diverges is reported as such; the program stops once all have.
  A trial that on_epoch stops (a pruned one) leaves the program, compiled again without it, so
  it costs nothing more; its record is its last epoch's, with 'stopped_at_epoch' and no test.
  """
  config = configs[0]
  start = time.perf_counter()
  steps_per_epoch = trainer.steps_per_epoch(config, splits.train)
  model, values, state = init_trials(configs, splits.info, steps_per_epoch)
  mesh = devices.make_mesh()
  programs = trial_programs(model, values, mesh)
  tr, state = trainer.make_trainer(config, programs, state, splits.train, splits.validation)
  active = list(range(len(configs)))  # Indices of the trials still in the program.
  history = [[] for _ in configs]
  results = [{} for _ in configs]
  done = 0
  while active and done < config.optim.num_epochs:
    done += 1
    state, sums = train_epoch(tr, state, done)
    last_batch = trainer.last_batch_metrics(tr, state, done * steps_per_epoch)
    train = _per_trial(sums, 'train_', values, last_batch)
    state = trainer.measure_statistics(tr, state)
    val = _per_trial(tr.programs.evaluate(state.variables, *tr.validation), 'val_', values)
    records = [t | v for t, v in zip(train, val, strict=True)]
    for i, record in zip(active, records, strict=True):
      history[i].append(record['val_accuracy'])
      diverged = metrics.diverged(record['train_loss'], splits.info.num_classes)
      results[i] = {**record, 'epochs_trained': done, 'diverged': diverged}
    logging.info(
      '%d trials, epoch %d/%d, %.1fs: best val_accuracy %.4f',
      len(active),
      done,
      config.optim.num_epochs,
      time.perf_counter() - start,
      np.nanmax([r['val_accuracy'] for r in records]),
    )
    if all(results[i]['diverged'] for i in active):
      logging.warning('Every trial of this program diverged in epoch %d; stopping it.', done)
      break  # Its trials are still tested.
    accuracies = [r['val_accuracy'] for r in records]
    goes_on = on_epoch(done, active, accuracies) if on_epoch else [True] * len(active)
    if not all(goes_on):
      for j in np.flatnonzero(~np.asarray(goes_on)):
        results[active[j]]['stopped_at_epoch'] = done
      kept = np.flatnonzero(goes_on)
      active = [active[j] for j in kept]
      if active:
        values, state = jax.tree.map(lambda x, kept=kept: x[kept], (values, state))
        tr = dataclasses.replace(tr, programs=trial_programs(model, values, mesh))
  if active:
    test_data = trainer.place_eval_data(config, splits.test, mesh)
    test = _per_trial(tr.programs.evaluate(state.variables, *test_data), 'test_', values)
    for i, test_metrics in zip(active, test, strict=True):
      results[i].update(test_metrics)
  seconds = time.perf_counter() - start
  return [
    {
      **result,
      'val_accuracy_per_epoch': accuracies,
      'program_seconds': seconds,
      'trials_in_program': len(configs),
    }
    for result, accuracies in zip(results, history, strict=True)
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


def write_table(records: list[dict], fields: list[str], path: files.AnyPath) -> None:
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
  files.write_atomic(path, '\n'.join(lines) + '\n')


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


def write_config(config: ml_collections.ConfigDict, record: dict, path: files.AnyPath) -> None:
  """The trial's config as a file that overrides the defaults, with its sweep result."""
  defaults = configuration.defaults()
  assignments = ''.join(
    f'  config.{key} = {configuration.get(config, key)!r}\n'
    for key in configuration.in_use(config)
    if configuration.get(config, key) != configuration.get(defaults, key)
  )
  files.write_atomic(
    path, CONFIG_TEMPLATE.format(**record, workdir=path.parent, path=path, assignments=assignments)
  )


def _read_records(path: files.AnyPath) -> dict[str, dict]:
  """The finished trials; a damaged line (a cut write, an edit) is dropped: that trial reruns."""
  if not path.exists():
    return {}
  records = {}
  for number, line in enumerate(path.read_text(errors='replace').splitlines(), 1):
    try:
      record = json.loads(line)
      records[record['id']] = record
    except (ValueError, KeyError, TypeError):
      if line.strip():
        logging.warning('%s: line %d is damaged; its trial is trained again.', path, number)
  return records


def _write_records(path: files.AnyPath, records: dict[str, dict]) -> None:
  """Rewrites the file atomically, so a killed sweep leaves only whole records."""
  files.write_atomic(path, ''.join(json.dumps(r) + '\n' for r in records.values()))


def _flatten(space: dict, prefix: str = '') -> dict:
  """{'optim': {'learning_rate': spec}} -> {'optim.learning_rate': spec}."""
  flat = {}
  for key, value in space.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def _check(search: dict) -> None:
  for path in (*search['grid'], *search['random']):
    if path not in configuration.SCHEMA:
      raise UserError(f'The sweep searches {path!r}, which is not a config field.')
    if configuration.SCHEMA[path].role is Role.SPLIT:
      raise UserError(f'The sweep cannot search {path!r}: all trials must share one split.')
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
  configuration.check(config, fields.paths('sweep'))
  search = config.sweep.to_dict()
  if not search['grid'] and not search['random']:
    raise UserError('--mode=sweep needs sweep.grid or sweep.random: --config=configs/sweep.py.')
  search.update(grid=_flatten(search['grid']), random=_flatten(search['random']))
  _check(search)
  if search['storage']:
    from mlp.tools import study

    workdir = files.path(workdir or Path('runs') / f'sweep-{search["study_name"]}')
    workdir.mkdir(parents=True, exist_ok=True)
    return study.run(config, search, workdir)
  if search['sampler'] != 'random':
    raise UserError(f'sweep.sampler={search["sampler"]} needs a study: set sweep.storage.')
  trials = {}
  for overrides in expand(search):
    trial = make_config(config, overrides)
    configuration.validate(trial)
    trials.setdefault(trial_id(trial), (trial, overrides))

  workdir = files.path(workdir or Path('runs') / f'sweep-{time.strftime("%Y%m%d-%H%M%S")}')
  lock.prepare(workdir)
  with lock.locked(workdir):  # Two sweeps in one workdir would each drop the other's trials.
    return _run_trials(config, search, trials, workdir)


def _run_trials(config, search: dict, trials: dict, workdir: files.AnyPath) -> dict:
  """Trains the unfinished trials, then writes the table and the best config."""
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
  splits = input_pipeline.load_splits(config) if batches else None
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
