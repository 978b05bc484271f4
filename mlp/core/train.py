"""The training loop: epochs, evaluation, logging and metrics.jsonl around the jitted steps."""

import collections
import contextlib
import dataclasses
import functools
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import logging

import input_pipeline
from mlp.core import build, checkpoint, configuration, devices, hints, reporting, steps, stopping
from mlp.core import workdir as lock
from mlp.core.errors import UserError
from mlp.core.steps import TrainState

PROGRESS_SECONDS = 5.0
# A mean epoch loss this many times ln(classes), the loss of guessing, is divergence.
DIVERGED_FACTOR = 10


@dataclasses.dataclass(frozen=True)
class Programs:
  """The jitted functions of one model on one mesh; each compiles once per input shape."""

  mesh: jax.sharding.Mesh
  train_on_indices: Callable
  train_on_batches: Callable
  evaluate: Callable
  probabilities: Callable


def compile_programs(model: steps.Model, mesh, trial_rates: dict | None = None) -> Programs:
  """The programs of one model, or of several trials trained at once.

  trial_rates maps steps.Model fields (network_rates, label_smoothing) to values with a leading
  trial axis: then the train state and parameters carry that axis too (jax.vmap), while the
  data and the batch order are shared.
  """
  replicated = devices.replicated(mesh)
  train_kwargs = dict(donate_argnums=0, out_shardings=(replicated, replicated))
  functions = [steps.train_on_indices, steps.train_on_batches, steps.evaluate]
  if trial_rates is None:
    functions = [functools.partial(f, model) for f in functions]
  else:

    def over_trials(function):
      def run(state, *data):
        return jax.vmap(lambda rates, s: function(model.replace(**rates), s, *data))(
          trial_rates, state
        )

      return run

    functions = [over_trials(f) for f in functions]
  train_on_indices, train_on_batches, evaluate = functions
  return Programs(
    mesh=mesh,
    train_on_indices=jax.jit(train_on_indices, **train_kwargs),
    train_on_batches=jax.jit(train_on_batches, **train_kwargs),
    evaluate=jax.jit(evaluate, out_shardings=replicated),
    probabilities=jax.jit(
      lambda params, images: jax.lax.map(
        functools.partial(steps.probabilities, model, params), images
      ),
      out_shardings=replicated,
    ),
  )


@dataclasses.dataclass(frozen=True)
class TrainData:
  """The training split, and a copy on the devices where the placement is 'device'."""

  split: input_pipeline.Split
  on_device: tuple[jax.Array, jax.Array] | None


def place_train_data(config, split: input_pipeline.Split, mesh) -> TrainData:
  on_device = None
  if config.run.placement == 'device':
    replicated = devices.replicated(mesh)
    on_device = (devices.put(split.images, replicated), devices.put(split.labels, replicated))
  return TrainData(split, on_device)


def place_eval_data(split: input_pipeline.Split, batch_size: int, mesh) -> tuple[jax.Array, ...]:
  sharding = devices.batch_sharded(mesh, 1)
  return tuple(devices.put(x, sharding) for x in input_pipeline.padded_batches(split, batch_size))


def epoch_calls(
  config,
  programs: Programs,
  state: TrainState,
  data: TrainData,
  epoch: int,
  start: int = 0,
  total: steps.Sums | None = None,
) -> Iterator[tuple[TrainState, steps.Sums, int]]:
  """Trains one epoch in calls of run.steps_per_call steps, from step `start` of it.

  Yields the state, the metric sums so far (added to `total`) and the steps done after each
  call: the boundaries where a run may stop and checkpoint. The device is never waited on,
  except every PROGRESS_SECONDS to log how far a long epoch has got (one call behind).
  """
  indices, mask = input_pipeline.epoch_order(
    len(data.split), config.optim.batch_size, config.data.seed, epoch
  )
  num_steps = indices.shape[0]
  chunk = config.run.steps_per_call or num_steps
  sharding = devices.batch_sharded(programs.mesh, 1)
  last_report = time.perf_counter()
  for first in range(start, num_steps, chunk):
    rows = slice(first, first + chunk)
    if data.on_device is not None:
      batches = (indices[rows], mask[rows])
      train_on = programs.train_on_indices
      state, sums = train_on(state, *data.on_device, *(devices.put(x, sharding) for x in batches))
    else:
      batches = (data.split.images[indices[rows]], data.split.labels[indices[rows]], mask[rows])
      state, sums = programs.train_on_batches(state, *(devices.put(x, sharding) for x in batches))
    if total is not None and time.perf_counter() - last_report > PROGRESS_SECONDS:
      jax.block_until_ready(total)
      logging.info('Epoch %d: %d/%d steps', epoch, first, num_steps)
      last_report = time.perf_counter()
    total = sums if total is None else steps.add_sums(total, sums)
    yield state, total, min(first + chunk, num_steps)


def run_epoch(config, programs: Programs, state: TrainState, data: TrainData, epoch: int):
  """Trains one whole epoch; returns the state and the metric sums."""
  ((state, total, _),) = collections.deque(epoch_calls(config, programs, state, data, epoch), 1)
  return state, total


def default_workdir(config_name: str) -> Path:
  return Path('runs') / f'{config_name}-{time.strftime("%Y%m%d-%H%M%S")}'


def _check_config(config, workdir: Path) -> None:
  """Checks that resuming in workdir keeps the state and the results, then saves the config."""
  if (workdir / configuration.CONFIG_FILE).exists():
    saved = configuration.load(workdir)
    conflicts = configuration.resume_conflicts(saved, config)
    if conflicts:
      raise UserError(
        f'{workdir} holds a run with another config ({conflicts}); use a new --workdir, or '
        f'resume it with {hints.train_command(saved, workdir)}'
      )
  checkpoint.check_end(workdir, config.optim.num_epochs)
  if devices.is_main_process():
    configuration.save(config, workdir)


def _read_records(workdir: Path) -> list[dict]:
  """The epoch records of metrics.jsonl that are whole and in order: epochs 1, 2, ..., k.

  A damaged line is dropped with a warning, with every line after it: the run resumes from a
  checkpoint at or before epoch k and writes them again. The test line is always rewritten.
  """
  path = workdir / reporting.METRICS_FILE
  if not path.exists():
    return []
  records = []
  for number, line in enumerate(path.read_text(errors='replace').splitlines(), 1):
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


def diverged(train_loss: float, num_classes: int) -> bool:
  """Whether an epoch's mean training loss says the run has diverged.

  Guessing uniformly scores ln(classes), about where an untrained network starts; a mean ten
  times worse than guessing is confidently wrong on most examples, which only a run whose
  updates blew up reaches (a healthy one falls below ln(classes) within its first epoch).
  """
  return not np.isfinite(train_loss) or train_loss > DIVERGED_FACTOR * np.log(num_classes)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
  """Trains (or resumes in workdir), validating each epoch and testing at the end.

  Returns the per-epoch records and the final test metrics, as written to metrics.jsonl. On
  SIGTERM or SIGINT it saves a checkpoint at the next step-call boundary and raises
  stopping.Stopped. The workdir is locked while it runs.
  """
  configuration.validate(config)
  devices.check_batch_size(config.optim.batch_size, 'optim.batch_size')
  devices.check_batch_size(config.run.eval_batch_size, 'run.eval_batch_size')
  workdir = Path(workdir)
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


def _train(config, workdir: Path, stop: stopping.StopRequests) -> dict:
  splits = input_pipeline.load_splits(config)
  if devices.is_main_process():
    splits.info.save(workdir)
  logging.info(
    'Data: %s, %d train, %d validation, %d test examples of shape %s, %d classes.',
    splits.name,
    len(splits.train),
    len(splits.validation),
    len(splits.test),
    splits.info.image_shape,
    splits.info.num_classes,
  )
  num_epochs = config.optim.num_epochs
  steps_per_epoch = -(-len(splits.train) // config.optim.batch_size)
  mesh = devices.make_mesh()
  model, params = build.build_model(config, splits.info, steps_per_epoch)
  programs = compile_programs(model, mesh)
  train_state = devices.replicate(build.init_state(config, model, params), mesh)
  records = _read_records(workdir)
  manager, restored, position = checkpoint.restore_latest(
    workdir, checkpoint.abstract(train_state), config.run.keep_checkpoints, len(records)
  )
  if restored is not None:
    train_state = restored
  if position.epoch >= num_epochs:
    logging.info('%s is complete (%d epochs); evaluating its checkpoint.', workdir, position.epoch)

  train_data = place_train_data(config, splits.train, mesh)
  validation = place_eval_data(splits.validation, config.run.eval_batch_size, mesh)
  is_writer = devices.is_main_process()
  if is_writer:
    reporting.preload_matplotlib()
  metrics = reporting.Metrics(
    workdir, configuration.to_dict(config), records[: position.epoch], is_writer
  )

  def stop_here(state: TrainState, epoch: int, steps_done: int, sums) -> None:
    """Saves the exact point reached and raises Stopped."""
    at_end = steps_done == steps_per_epoch
    checkpoint.save(
      manager,
      state,
      checkpoint.Position(
        epoch if at_end else epoch - 1,
        0 if at_end else steps_done,
        None if at_end else {k: float(v) for k, v in jax.device_get(sums).items()},
      ),
    )
    raise stopping.Stopped(
      f'Stopped by {stop.name} in epoch {epoch} after step {steps_done} of {steps_per_epoch}, '
      f'with a checkpoint of that point; run the same command (--workdir={workdir}) to resume.',
      stop.signum,
    )

  try:
    epoch_seconds = []
    for epoch in range(position.epoch + 1, num_epochs + 1):
      start = time.perf_counter()
      resume = position.epoch_steps if epoch == position.epoch + 1 else 0
      calls = epoch_calls(
        config,
        programs,
        train_state,
        train_data,
        epoch,
        resume,
        position.sums() if resume else None,
      )
      stopping_after_epoch = False
      for train_state, train_sums, steps_done in calls:
        if stop.requested((epoch - 1) * steps_per_epoch + steps_done):
          if steps_done < steps_per_epoch:
            stop_here(train_state, epoch, steps_done, train_sums)
          stopping_after_epoch = True
      val_sums = programs.evaluate(train_state.params, *validation)
      record = {'epoch': epoch, **steps.summarize(train_sums, 'train_')}
      record.update(steps.summarize(val_sums, 'val_'))
      if diverged(record['train_loss'], splits.info.num_classes):
        raise UserError(
          f'The training loss became {record["train_loss"]:.4g} in epoch {epoch} (diverged); '
          'stopped without writing a checkpoint. Lower optim.learning_rate and train into a '
          'new --workdir.'
        )
      epoch_seconds.append(time.perf_counter() - start)
      record.update(
        epoch_seconds=epoch_seconds[-1], examples_per_sec=len(splits.train) / epoch_seconds[-1]
      )
      eta = float(np.median(epoch_seconds)) * (num_epochs - epoch)
      metrics.write(epoch, record, f'Epoch {epoch}/{num_epochs}', f'ETA {eta:.0f}s')
      every = config.run.checkpoint_every_epochs
      if stopping_after_epoch and epoch < num_epochs:
        stop_here(train_state, epoch, steps_per_epoch, None)
      if every and (epoch % every == 0 or epoch == num_epochs):
        checkpoint.save(manager, train_state, checkpoint.Position(epoch))

    test_images, test_labels, test_mask = place_eval_data(
      splits.test, config.run.eval_batch_size, mesh
    )
    test_sums = programs.evaluate(train_state.params, test_images, test_labels, test_mask)
    epochs = [r for r in metrics.records if 'epoch' in r]
    test_metrics = steps.summarize(test_sums, 'test_')
    metrics.write(num_epochs, test_metrics, 'Test')
    metrics.write_hparams(num_epochs, ['val_loss', 'val_accuracy', *test_metrics])
    metrics.close()
    # Every process runs this program (it spans all devices); only process 0 draws.
    probabilities = np.asarray(programs.probabilities(train_state.params, test_images))
    if is_writer:
      reporting.save_pictures(
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


def evaluate_checkpoint(workdir: str | Path) -> dict[str, float]:
  """Validation and test metrics of the latest checkpoint in workdir (--mode=eval)."""
  config, info, model, params = checkpoint.restore_for_inference(Path(workdir))
  mesh = devices.make_mesh()
  evaluate = compile_programs(model, mesh).evaluate
  splits = input_pipeline.load_splits(config)
  if splits.info != info:
    raise UserError(f'The data of {config.data.name} changed since {workdir} was trained.')
  metrics = {}
  for name, split in (('val_', splits.validation), ('test_', splits.test)):
    sums = evaluate(params, *place_eval_data(split, config.run.eval_batch_size, mesh))
    metrics.update(steps.summarize(sums, name))
  logging.info('%s', reporting.format_line('Checkpoint', metrics))
  return metrics
