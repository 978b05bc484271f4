"""A training run's workdir, kept safe around the loop: the lock, signals, the saved config, the
records, checkpoints, the clock and the pictures.

The loop (mlp/core/train.py) asks a Run where to start, gives it records and states, and asks it
whether to stop; everything that makes that safe to interrupt and resume is here.
"""

import contextlib
import json
import math
import time

import jax
import ml_collections
import numpy as np
from absl import logging

import input_pipeline
import mlp
from input_pipeline.errors import UserError
from mlp.core import configuration, metrics
from mlp.core.steps import TrainState
from mlp.core.trainer import last_step
from mlp.machinery import checkpoint, devices, files, lock, reporting, run_config, stopping

# A long stretch between records logs how far it has got at most this often.
PROGRESS_SECONDS = 15.0
# What JAX reports while it traces and compiles: time that is not training.
COMPILE_EVENTS = (
  '/jax/core/compile/jaxpr_trace_duration',
  '/jax/core/compile/jaxpr_to_mlir_module_duration',
  '/jax/core/compile/backend_compile_duration',
)
_compile_seconds = [0.0]


def _count_compilation(event: str, duration: float, **kwargs) -> None:
  if event in COMPILE_EVENTS:
    _compile_seconds[0] += duration


jax.monitoring.register_event_duration_secs_listener(_count_compilation)


def compile_seconds() -> float:
  """Seconds this process has spent tracing and compiling so far."""
  return _compile_seconds[0]


class Clock:
  """Seconds spent in training step calls, compilation excluded, up to the last stop()."""

  def __init__(self):
    self.seconds = 0.0
    self._started: tuple[float, float] | None = None

  def start(self) -> None:
    if self._started is None:
      self._started = (time.perf_counter(), compile_seconds())

  def stop(self, state) -> None:
    """Ends a stretch of training once the calls dispatched so far have run."""
    if self._started is not None:
      jax.block_until_ready(state)
      started, compiled = self._started
      self.seconds += time.perf_counter() - started - (compile_seconds() - compiled)
      self._started = None


class Run:
  """The workdir of one training run, locked from __enter__ to __exit__."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    configuration.validate(config)
    devices.check_batch_size(config.optim.batch_size, 'optim.batch_size')
    devices.check_batch_size(config.run.eval_batch_size, 'run.eval_batch_size')
    self.config = config
    self.workdir = files.path(workdir)  # A directory, or a bucket's gs://bucket/path.
    self.clock = Clock()
    self._exits = contextlib.ExitStack()
    self._manager = None
    self._last_progress = time.perf_counter()

  def __enter__(self) -> 'Run':
    lock.prepare(self.workdir)
    lock.refuse_foreign(self.workdir)
    self._exits.enter_context(lock.locked(self.workdir))
    self._stop = self._exits.enter_context(stopping.StopRequests())
    self._check_config()
    return self

  def __exit__(self, kind, error, traceback) -> None:
    try:
      if self._manager is not None:
        if error is None:
          checkpoint.finish(self._manager)  # The last save completes, or one line says why.
        else:
          with contextlib.suppress(UserError):  # The error in flight says more.
            checkpoint.finish(self._manager)
    finally:
      self._exits.close()
    if error is None and self._stop.signum:  # It came after the last step: the run is done.
      raise stopping.Stopped(
        f'{self._stop.name} came after the last training step; the run in {self.workdir} is '
        'complete.',
        self._stop.signum,
      )

  def _check_config(self) -> None:
    """Checks that resuming here keeps the state and the results, then saves the config."""
    if (self.workdir / run_config.CONFIG_FILE).exists():
      saved = run_config.load(self.workdir)
      conflicts = run_config.resume_conflicts(saved, self.config)
      if conflicts:
        raise UserError(
          f'{self.workdir} holds a run with another config ({conflicts}); use a new --workdir, '
          f'or resume it with {run_config.train_command(saved, self.workdir)}'
        )
    checkpoint.check_end(self.workdir, self.config.optim.num_epochs)
    if devices.is_main_process():
      run_config.save(self.config, self.workdir)

  def results(self) -> dict | None:
    """A finished run's records and test metrics, which a re-run returns untouched; else None."""
    num_epochs = self.config.optim.num_epochs
    finished = reporting.read_results(self.workdir, math.ceil(num_epochs))
    if finished and checkpoint.finished_at(self.workdir, num_epochs):
      logging.info('%s is complete; its results in metrics.jsonl stand.', self.workdir)
      return finished
    return None

  def start(self, splits: input_pipeline.Splits, state: TrainState, steps_per_epoch: int):
    """The state to train from, its step and the metric sums since the last record.

    Restores the latest checkpoint that metrics.jsonl reaches, and keeps the records up to it.
    """
    if devices.is_main_process():
      splits.info.save(self.workdir)
    self.splits, self.steps_per_epoch = splits, steps_per_epoch
    records = [
      {'step': r['epoch'] * steps_per_epoch, **r} for r in reporting.read_records(self.workdir)
    ]
    last_epoch = records[-1]['step'] // steps_per_epoch if records else 0
    self._manager, restored, position = checkpoint.restore_latest(
      self.workdir, checkpoint.abstract(state), self.config.run.keep_checkpoints, last_epoch
    )
    step = position.epoch * steps_per_epoch + position.epoch_steps
    if step >= last_step(self.config, steps_per_epoch):
      logging.info('%s is complete (step %d); evaluating its checkpoint.', self.workdir, step)
    self.sink = reporting.Metrics(
      self.workdir,
      run_config.to_dict(self.config),
      [r for r in records if r['step'] <= step],
      devices.is_main_process(),
    )
    sums, self._start_step, self._started = position.sums(), step, time.perf_counter()
    self._stop.begin()  # From the first step call on, a signal stops at a call boundary.
    self._written = (step, 0.0)  # The step and training seconds of the last record.
    return (state if restored is None else restored), step, sums or metrics.zero_sums()

  def write(self, step: int, record: dict) -> None:
    """Writes a record of step, with its epoch and times; refuses a diverged run."""
    loss = record.get('train_loss')
    if loss is not None and metrics.diverged(loss, self.splits.info.num_classes):
      raise UserError(
        f'The training loss became {loss:.4g} by step {step} (diverged); stopped without '
        'writing a checkpoint. Lower optim.learning_rate and train into a new --workdir.'
      )
    epoch = -(-step // self.steps_per_epoch)
    steps, seconds = step - self._written[0], self.clock.seconds - self._written[1]
    record = {
      'step': step,
      'epoch': epoch,
      **record,
      'examples_per_sec': steps * self.config.optim.batch_size / max(seconds, 1e-9),
      'train_seconds': self.clock.seconds,
      'elapsed_seconds': time.perf_counter() - mlp.STARTED,
    }
    self._written = (step, self.clock.seconds)
    last = last_step(self.config, self.steps_per_epoch)
    eta = self._since_start() / max(step - self._start_step, 1) * (last - step)
    self.sink.write(step, record, f'Step {step}/{last} (epoch {epoch})', f'ETA {eta:.0f}s')
    self._last_progress = time.perf_counter()

  def _since_start(self) -> float:
    return time.perf_counter() - self._started

  def save(self, state: TrainState, step: int, sums: metrics.Sums) -> None:
    """Checkpoints the state after `step` steps, with the metric sums since the last record."""
    self.clock.stop(state)
    epoch, epoch_steps = divmod(step, self.steps_per_epoch)
    host = {k: float(v) for k, v in jax.device_get(sums).items()}
    host = host if host[metrics.COUNT] else None  # None: nothing trained since the last record.
    checkpoint.save(self._manager, state, checkpoint.Position(epoch, epoch_steps, host))

  def stop_requested(self, step: int) -> bool:
    """Whether a signal asked to stop; also logs how far a long stretch has got."""
    if time.perf_counter() - self._last_progress > PROGRESS_SECONDS:
      last = last_step(self.config, self.steps_per_epoch)
      logging.info('Step %d/%d, %.0f s since the run started.', step, last, self._since_start())
      self._last_progress = time.perf_counter()
    return self._stop.requested(step)

  def stopped(self, step: int) -> stopping.Stopped:
    epoch = -(-step // self.steps_per_epoch)
    done = step - (epoch - 1) * self.steps_per_epoch
    return stopping.Stopped(
      f'Stopped by {self._stop.name} in epoch {epoch} after step {done} of '
      f'{self.steps_per_epoch}, with a checkpoint of that point; run the same command '
      f'(--workdir={self.workdir}) to resume.',
      self._stop.signum,
    )

  def save_json(self, name: str, value: dict) -> None:
    """Writes a file of the run's results beside its metrics (process 0 only)."""
    if devices.is_main_process():
      files.write_atomic(self.workdir / name, json.dumps(value) + '\n')

  def finish(self, test_metrics: dict, probabilities: jax.Array) -> None:
    """Writes the test record and the hyperparameters, then draws the pictures in a child."""
    last = last_step(self.config, self.steps_per_epoch)
    record = {'step': last, 'epoch': -(-last // self.steps_per_epoch), **test_metrics}
    self.sink.write(last, record, 'Test')
    self.sink.write_hparams(last, ['val_loss', 'val_accuracy', *test_metrics])
    self.sink.close()
    records = [r for r in self.sink.records if 'test_loss' not in r]
    # Every process runs this program (it spans all devices); only process 0 draws.
    test = self.splits.test
    probabilities = np.asarray(probabilities)
    if devices.is_main_process() and self.config.run.pictures:
      reporting.draw_in_background(
        self.workdir,
        records,
        test.images,
        test.labels,
        probabilities.reshape(-1, probabilities.shape[-1])[: len(test)],
        self.splits.info.class_names,
      )
