"""Training a run: the trainer's epochs wrapped with checkpoints, stopping and the metrics sink."""

import contextlib
import json
import os
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import logging

import input_pipeline
from input_pipeline.errors import UserError
from mlp.core import configuration, metrics, trainer
from mlp.core.steps import TrainState
from mlp.machinery import checkpoint, devices, files, lock, reporting, run_config, stopping


def default_workdir(config_name: str) -> Path:
  return Path('runs') / f'{config_name}-{time.strftime("%Y%m%d-%H%M%S")}'


def _check_config(config, workdir: files.AnyPath) -> None:
  """Checks that resuming in workdir keeps the state and the results, then saves the config."""
  if (workdir / run_config.CONFIG_FILE).exists():
    saved = run_config.load(workdir)
    conflicts = run_config.resume_conflicts(saved, config)
    if conflicts:
      raise UserError(
        f'{workdir} holds a run with another config ({conflicts}); use a new --workdir, or '
        f'resume it with {run_config.train_command(saved, workdir)}'
      )
  checkpoint.check_end(workdir, config.optim.num_epochs)
  if devices.is_main_process():
    run_config.save(config, workdir)


def _read_records(workdir: files.AnyPath) -> list[dict]:
  """The epoch records of metrics.jsonl that are whole and in order: epochs 1, 2, ..., k.

  A damaged line is dropped with a warning, with every line after it: the run resumes from a
  checkpoint at or before epoch k and writes them again. The test line is always rewritten.
  """
  path = workdir / reporting.METRICS_FILE
  if not path.exists():
    return []
  records = []
  for number, line in enumerate(files.read_bytes(path).decode(errors='replace').splitlines(), 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
      whole = isinstance(record, dict) and record.get('epoch', len(records) + 1) == len(records) + 1
    except ValueError:
      whole = False
    if not whole:
      logging.warning(
        '%s: line %d is damaged; dropping it and the lines after it, which training from an '
        'earlier checkpoint writes again.',
        path,
        number,
      )
      break
    if 'epoch' in record:
      records.append(record)
  return records


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
  """Trains (or resumes in workdir), validating each epoch and testing at the end.

  Returns the per-epoch records and the final test metrics, as written to metrics.jsonl. On
  SIGTERM or SIGINT it saves a checkpoint at the next step-call boundary and raises
  stopping.Stopped. The workdir is locked while it runs.
  """
  configuration.validate(config)
  devices.check_batch_size(config.optim.batch_size, 'optim.batch_size')
  devices.check_batch_size(config.run.eval_batch_size, 'run.eval_batch_size')
  workdir = files.path(workdir)  # A directory, or a bucket's gs://bucket/path.
  lock.prepare(workdir)
  with lock.locked(workdir), stopping.StopRequests() as stop:
    _check_config(config, workdir)
    result = _train(config, workdir, stop)
    if stop.signum:  # It came after the last boundary: the run finished, and says so.
      raise stopping.Stopped(
        f'{stop.name} came after the last training step; the run in {workdir} is complete.',
        stop.signum,
      )
    return result


def _log_data(splits: input_pipeline.Splits) -> None:
  logging.info(
    'Data: %s, %d train, %d validation, %d test examples of shape %s, %d classes.',
    splits.name,
    len(splits.train),
    len(splits.validation),
    len(splits.test),
    splits.info.image_shape,
    splits.info.num_classes,
  )


def _train(config, workdir: files.AnyPath, stop: stopping.StopRequests) -> dict:
  splits = input_pipeline.load_splits(config)
  if devices.is_main_process():
    splits.info.save(workdir)
  _log_data(splits)
  num_epochs = config.optim.num_epochs
  run, train_state = trainer.setup([config], splits.info, splits.train, splits.validation)
  records = _read_records(workdir)
  manager, restored, position = checkpoint.restore_latest(
    workdir, checkpoint.abstract(train_state), config.run.keep_checkpoints, len(records)
  )
  if restored is not None:
    train_state = restored
  if position.epoch >= num_epochs:
    logging.info('%s is complete (%d epochs); evaluating its checkpoint.', workdir, position.epoch)
  is_writer = devices.is_main_process()
  sink = reporting.Metrics(
    workdir, run_config.to_dict(config), records[: position.epoch], is_writer
  )

  def save(state: TrainState, epochs_done: int, steps: int = 0, sums=None) -> None:
    sums = None if sums is None else {k: float(v) for k, v in jax.device_get(sums).items()}
    checkpoint.save(manager, state, checkpoint.Position(epochs_done, steps, sums))

  def stopped(epoch: int, steps_done: int) -> stopping.Stopped:
    return stopping.Stopped(
      f'Stopped by {stop.name} in epoch {epoch} after step {steps_done} of '
      f'{run.steps_per_epoch}, with a checkpoint of that point; run the same command '
      f'(--workdir={workdir}) to resume.',
      stop.signum,
    )

  try:
    epoch_seconds = []
    stop.begin()  # Until here a signal ends the run at once: there is nothing to save.
    for epoch in trainer.epochs(
      run,
      train_state,
      position.epoch + 1,
      num_epochs,
      position.epoch_steps,
      position.sums(),
      stop.requested,
    ):
      train_state = epoch.state
      if not epoch.complete:
        save(epoch.state, epoch.number - 1, epoch.steps_done, epoch.sums)
        raise stopped(epoch.number, epoch.steps_done)
      record = epoch.record
      if trainer.diverged(record['train_loss'], splits.info.num_classes):
        raise UserError(
          f'The training loss became {record["train_loss"]:.4g} in epoch {epoch.number} '
          '(diverged); stopped without writing a checkpoint. Lower optim.learning_rate and '
          'train into a new --workdir.'
        )
      epoch_seconds.append(record['epoch_seconds'])
      eta = float(np.median(epoch_seconds)) * (num_epochs - epoch.number)
      sink.write(epoch.number, record, f'Epoch {epoch.number}/{num_epochs}', f'ETA {eta:.0f}s')
      every = config.run.checkpoint_every_epochs
      stopping_now = stop.requested(epoch.number * run.steps_per_epoch)
      if stopping_now or (every and (epoch.number % every == 0 or epoch.number == num_epochs)):
        save(epoch.state, epoch.number)
      if stopping_now and epoch.number < num_epochs:
        raise stopped(epoch.number, run.steps_per_epoch)

    test_images, test_labels, test_mask = trainer.place_eval_data(
      splits.test, config.run.eval_batch_size, run.mesh
    )
    test_sums = run.programs.evaluate(train_state.variables, test_images, test_labels, test_mask)
    epochs = [r for r in sink.records if 'epoch' in r]
    test_metrics = metrics.summarize(test_sums, 'test_')
    sink.write(num_epochs, test_metrics, 'Test')
    sink.write_hparams(num_epochs, ['val_loss', 'val_accuracy', *test_metrics])
    sink.close()
    # Every process runs this program (it spans all devices); only process 0 draws.
    probabilities = np.asarray(run.programs.probabilities(train_state.variables, test_images))
    if is_writer and config.run.pictures:
      reporting.draw_in_background(
        workdir,
        epochs,
        splits.test.images,
        splits.test.labels,
        probabilities.reshape(-1, probabilities.shape[-1])[: len(splits.test)],
        splits.info.class_names,
      )
  except BaseException:
    with contextlib.suppress(UserError):  # The error in flight says more than a failed save.
      checkpoint.finish(manager)
    raise
  checkpoint.finish(manager)  # The last save completes, or the run ends in a one-line error.
  return {'epochs': epochs, **test_metrics}


def evaluate_checkpoint(workdir: str | os.PathLike) -> dict[str, float]:
  """Validation and test metrics of the latest checkpoint in workdir (--mode=eval)."""
  config, info, model, variables = checkpoint.restore_for_inference(workdir)
  mesh = devices.make_mesh()
  evaluate = trainer.compile_programs(model, mesh).evaluate
  splits = input_pipeline.load_splits(config)
  if splits.info != info:
    raise UserError(f'The data of {config.data.name} changed since {workdir} was trained.')
  result = {}
  for name, split in (('val_', splits.validation), ('test_', splits.test)):
    sums = evaluate(variables, *trainer.place_eval_data(split, config.run.eval_batch_size, mesh))
    result.update(metrics.summarize(sums, name))
  logging.info('%s', reporting.format_line('Checkpoint', result))
  return result
