"""Time to accuracy: train a config until its validation accuracy reaches a target.

  python main.py --mode=benchmark --config=configs/speedrun.py \\
    --config.benchmark.target_accuracy=0.99 --config.benchmark.seeds=5

The config trains through the same loop as `python main.py` (mlp/core/train.py), validating
every benchmark.eval_every_steps steps and writing nothing: a run without a workdir stands in
for mlp/machinery/run.py. At the first validation at or over the target it stops and tests once.
Reported per seed and as mean and spread: seconds to the target in training step calls
(compilation excluded, validation excluded) and since the process started, the steps taken,
and the test accuracy of the state that reached it.
"""

import statistics
import time

import ml_collections
from absl import logging

import input_pipeline
import mlp
from mlp.core import metrics
from mlp.core.train import train_loop
from mlp.core.trainer import place_eval_data, setup
from mlp.machinery.run import Clock


class Reached(Exception):
  """The target was reached at a step: the loop's way out."""


class TargetRun:
  """What train_loop asks of a run, without a workdir: records in memory, stop at the target."""

  def __init__(self, target: float):
    self.clock = Clock()
    self.target = target
    self.records: list[dict] = []

  def write(self, step: int, record: dict) -> None:
    record = {'step': step, **record, 'train_seconds': self.clock.seconds}
    record['elapsed_seconds'] = time.perf_counter() - mlp.STARTED
    self.records.append(record)

  def stop_requested(self, step: int) -> bool:
    return bool(self.records) and self.records[-1].get('val_accuracy', 0.0) >= self.target

  def save(self, state, step: int, sums) -> None:
    """Keeps the state: at the target the loop saves before it stops."""
    self.clock.stop(state)
    self.state = state

  def stopped(self, step: int) -> Reached:
    return Reached(step)


def measure(config: ml_collections.ConfigDict) -> dict:
  """Seconds to config.benchmark.target_accuracy for each seed, their mean and spread."""
  splits = input_pipeline.load_splits(config)
  runs = []
  for offset in range(config.benchmark.seeds):
    seeded = config.copy_and_resolve_references()
    seeded.seed = config.seed + offset
    seeded.run.eval_every_steps = config.benchmark.eval_every_steps
    seeded.run.log_every_steps = config.benchmark.eval_every_steps
    seeded.run.checkpoint_every_steps = seeded.run.checkpoint_every_epochs = 0
    runs.append(_one_seed(seeded, splits))
    logging.info('Seed %d: %s', seeded.seed, runs[-1])
  summary = {'target_accuracy': config.benchmark.target_accuracy, 'seeds': runs}
  for key in ('train_seconds', 'elapsed_seconds', 'test_accuracy', 'steps'):
    values = [r[key] for r in runs if r['reached']]
    if values:
      summary[f'{key}_mean'] = statistics.fmean(values)
      summary[f'{key}_spread'] = max(values) - min(values)
  summary['reached'] = sum(r['reached'] for r in runs)
  return summary


def _one_seed(config: ml_collections.ConfigDict, splits: input_pipeline.Splits) -> dict:
  trainer, state = setup(config, splits.info, splits.train, splits.validation)
  run = TargetRun(config.benchmark.target_accuracy)
  try:
    state = train_loop(config, trainer, run, state, 0, metrics.zero_sums())
  except Reached:
    state = run.state
  record = run.records[-1]
  test_batches = place_eval_data(config, splits.test, trainer.mesh)
  test = metrics.summarize(trainer.programs.evaluate(state.variables, *test_batches), 'test_')
  return {
    'seed': config.seed,
    'reached': record.get('val_accuracy', 0.0) >= config.benchmark.target_accuracy,
    'steps': record['step'],
    'val_accuracy': record.get('val_accuracy'),
    'train_seconds': record['train_seconds'],
    'elapsed_seconds': record['elapsed_seconds'],
    'test_accuracy': test['test_accuracy'],
  }
