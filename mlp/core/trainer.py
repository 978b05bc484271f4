"""One trainer for every mode that trains: its set-up, and a loop that yields each epoch.

`setup` builds the model, optimizer, mesh, compiled programs and device-resident data of one
config, or of several sweep trials trained at once (jax.vmap over their states). `epochs`
trains and validates epoch after epoch and yields each: train (checkpoints, stopping, the
metrics sink), sweep (trial selection) and benchmark (timing) consume the same loop.
"""

import dataclasses
import functools
import statistics
import time
from collections.abc import Callable, Iterator

import jax
import ml_collections
import numpy as np
from absl import logging

import input_pipeline
from mlp.core import build, metrics, steps
from mlp.core.steps import TrainState
from mlp.machinery import devices, pacing

# A long epoch logs how far it has got at most this often (one step call late).
PROGRESS_SECONDS = 15.0
# A mean epoch loss this many times ln(classes), the loss of guessing, is divergence.
DIVERGED_FACTOR = 10


@dataclasses.dataclass(frozen=True)
class Programs:
  """The jitted functions of one model on one mesh; each compiles once per input shape."""

  mesh: jax.sharding.Mesh
  train_on_indices: Callable
  train_on_batches: Callable
  at_epoch_end: Callable
  evaluate: Callable
  probabilities: Callable


def compile_programs(model: steps.Model, mesh, trial_rates: dict | None = None) -> Programs:
  """The programs of one model, or of several trials trained at once.

  trial_rates maps steps.Model fields (network_rates, label_smoothing) to values with a leading
  trial axis: then the train state and variables carry that axis too (jax.vmap), while the
  data and the batch order are shared.
  """
  replicated = devices.replicated(mesh)
  functions = [steps.train_on_indices, steps.train_on_batches, steps.at_epoch_end, steps.evaluate]
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
  train_on_indices, train_on_batches, at_epoch_end, evaluate = functions
  train_kwargs = dict(donate_argnums=0, out_shardings=(replicated, replicated))
  return Programs(
    mesh=mesh,
    train_on_indices=jax.jit(train_on_indices, **train_kwargs),
    train_on_batches=jax.jit(train_on_batches, **train_kwargs),
    at_epoch_end=jax.jit(at_epoch_end, out_shardings=replicated),
    evaluate=jax.jit(evaluate, out_shardings=replicated),
    probabilities=jax.jit(
      lambda variables, images: jax.lax.map(
        functools.partial(steps.probabilities, model, variables), images
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


@dataclasses.dataclass(frozen=True)
class Trainer:
  """What training one config (or trials sharing one program) needs, built once."""

  config: ml_collections.ConfigDict  # The first trial's, for what trials share.
  model: steps.Model
  trial_rates: dict | None  # None: one model, no trial axis.
  programs: Programs
  train_data: TrainData
  validation: tuple[jax.Array, ...] | None  # Padded batches on the devices; None: not placed.
  steps_per_epoch: int
  steps_per_call: int  # Chosen by mlp/machinery/pacing.py unless run.steps_per_call sets it.

  @property
  def mesh(self) -> jax.sharding.Mesh:
    return self.programs.mesh


def setup(
  configs: list[ml_collections.ConfigDict],
  info: input_pipeline.DatasetInfo,
  train: input_pipeline.Split,
  validation: input_pipeline.Split | None = None,
  mesh: jax.sharding.Mesh | None = None,
) -> tuple[Trainer, TrainState]:
  """The trainer of configs that share a program, and their initial train state.

  One config trains without a trial axis: XLA's batched matmuls are slower than plain ones.
  Without a validation split only epoch_calls can be used (the benchmark's timing).
  """
  config = configs[0]
  steps_per_epoch = -(-len(train) // config.optim.batch_size)
  mesh = mesh or devices.make_mesh()
  model, rates, state = build.init_trials(configs, info, steps_per_epoch)
  trainer = Trainer(
    config=config,
    model=model,
    trial_rates=rates,
    programs=compile_programs(model, mesh, rates),
    train_data=place_train_data(config, train, mesh),
    validation=None
    if validation is None
    else place_eval_data(validation, config.run.eval_batch_size, mesh),
    steps_per_epoch=steps_per_epoch,
    steps_per_call=steps_per_epoch,
  )
  state = devices.replicate(state, mesh)
  chunk = pacing.steps_per_call(
    config, steps_per_epoch, functools.partial(_seconds_per_step, trainer, state)
  )
  return dataclasses.replace(trainer, steps_per_call=chunk), state


def _seconds_per_step(
  trainer: Trainer, state: TrainState, steps: int, limit: float | None, repeats: int = 3
) -> float:
  """Median seconds per step of calls of `steps` steps on epoch 1's batches, after a first
  (compiling) call, on a copy of the state (the calls donate it); a call slower than limit per
  step ends the timing there."""
  config = trainer.config
  indices, mask = input_pipeline.epoch_order(
    len(trainer.train_data.split), config.optim.batch_size, config.data.seed, 1
  )
  state = jax.tree.map(lambda x: x.copy(), state)
  times = []
  for _ in range(repeats + 1):
    start = time.perf_counter()
    state, sums = _call(trainer, state, indices[:steps], mask[:steps])
    jax.block_until_ready((state, sums))
    times.append((time.perf_counter() - start) / steps)
    if limit is not None and len(times) > 1 and times[-1] > limit:
      break
  return statistics.median(times[1:])


def _call(trainer: Trainer, state: TrainState, indices: np.ndarray, mask: np.ndarray):
  """One jitted call training the batches of indices and mask, both (steps, batch)."""
  programs, data = trainer.programs, trainer.train_data
  sharding = devices.batch_sharded(programs.mesh, 1)
  if data.on_device is not None:
    return programs.train_on_indices(
      state, *data.on_device, *(devices.put(x, sharding) for x in (indices, mask))
    )
  batches = (data.split.images[indices], data.split.labels[indices], mask)
  return programs.train_on_batches(state, *(devices.put(x, sharding) for x in batches))


def epoch_calls(
  trainer: Trainer, state: TrainState, epoch: int, start: int = 0
) -> Iterator[tuple[TrainState, metrics.Sums, int, np.ndarray]]:
  """Trains one epoch in calls of trainer.steps_per_call steps, from step `start` of it.

  Yields after each call the state, that call's metric sums, the steps done and the last batch's
  indices: the boundaries where a run may stop and checkpoint. The device is never waited on,
  except every PROGRESS_SECONDS to log how far a long epoch has got (one call behind).
  """
  config = trainer.config
  indices, mask = input_pipeline.epoch_order(
    len(trainer.train_data.split), config.optim.batch_size, config.data.seed, epoch
  )
  num_steps = indices.shape[0]
  chunk = trainer.steps_per_call
  started = last_report = time.perf_counter()
  previous = None
  for first in range(start, num_steps, chunk):
    rows = slice(first, first + chunk)
    state, sums = _call(trainer, state, indices[rows], mask[rows])
    now = time.perf_counter()
    if previous is not None and now - last_report > PROGRESS_SECONDS:
      jax.block_until_ready(previous)
      done = first - start
      rate = done * config.optim.batch_size / (time.perf_counter() - started)
      eta = (num_steps - first) * config.optim.batch_size / rate
      logging.info(
        'Epoch %d: %d/%d steps, %.0f examples/s, epoch ETA %.0fs.',
        epoch,
        first,
        num_steps,
        rate,
        eta,
      )
      last_report = time.perf_counter()
    previous = sums
    end = min(first + chunk, num_steps)
    yield state, sums, end, (indices[end - 1], mask[end - 1])


def run_epoch(trainer: Trainer, state: TrainState, epoch: int) -> tuple[TrainState, metrics.Sums]:
  """Trains one whole epoch without validating it: the benchmark's unit of time."""
  total = None
  for trained, sums, _, _ in epoch_calls(trainer, state, epoch):
    state, total = trained, sums if total is None else metrics.add(total, sums)
  return state, total


@dataclasses.dataclass(frozen=True)
class Epoch:
  """One epoch trained, or the part of it done when a stop was requested.

  record (complete epochs only) holds the train and validation metrics, epoch_seconds and
  examples_per_sec; a list of such dicts, one per trial, for trials trained at once.
  """

  number: int
  state: TrainState
  steps_done: int
  sums: metrics.Sums  # Per-example sums of the epoch's steps so far.
  record: dict | list[dict] | None

  @property
  def complete(self) -> bool:
    return self.record is not None


def epochs(
  trainer: Trainer,
  state: TrainState,
  first: int,
  last: int,
  resume_steps: int = 0,
  resume_sums: metrics.Sums | None = None,
  stop_requested: Callable[[int], bool] = lambda global_step: False,
) -> Iterator[Epoch]:
  """Trains epochs first..last and yields each once validated.

  The first may resume resume_steps into the epoch with the sums of those steps. After every
  step call stop_requested(global step) is asked: if it says stop before the epoch's end, the
  part done is yielded (record None) and the loop ends.
  """
  for number in range(first, last + 1):
    started = time.perf_counter()
    start = resume_steps if number == first else 0
    total = resume_sums if start else None
    for trained, sums, steps_done, batch in epoch_calls(trainer, state, number, start):
      state, last_batch = trained, batch
      total = sums if total is None else metrics.add(total, sums)
      global_step = (number - 1) * trainer.steps_per_epoch + steps_done
      if steps_done < trainer.steps_per_epoch and stop_requested(global_step):
        yield Epoch(number, state, steps_done, total, None)
        return
    record = epoch_record(trainer, state, total, last_batch)
    seconds = time.perf_counter() - started
    examples = len(trainer.train_data.split)
    timing = {'epoch_seconds': seconds, 'examples_per_sec': examples / seconds}
    if isinstance(record, list):
      record = [{'epoch': number, **r, **timing} for r in record]
    else:
      record = {'epoch': number, **record, **timing}
    yield Epoch(number, state, trainer.steps_per_epoch, total, record)


def epoch_record(trainer: Trainer, state: TrainState, sums, last_batch) -> dict | list[dict]:
  """The epoch's train means, its end-of-epoch metrics and the validation metrics."""
  programs = trainer.programs
  indices, mask = last_batch
  images, labels = (
    trainer.train_data.split.images[indices],
    trainer.train_data.split.labels[indices],
  )
  sharding = devices.batch_sharded(programs.mesh, 0)
  at_end = programs.at_epoch_end(state, *(devices.put(x, sharding) for x in (images, labels, mask)))
  train = metrics.summarize(sums, 'train_', at_end)
  validation = metrics.summarize(programs.evaluate(state.variables, *trainer.validation), 'val_')
  if isinstance(train, list):
    return [t | v for t, v in zip(train, validation, strict=True)]
  return train | validation


def evaluate(
  trainer: Trainer, variables: steps.Variables, split: input_pipeline.Split, prefix: str
) -> dict | list[dict]:
  """Metric means of a split (for trials: a list, one dict per trial)."""
  data = place_eval_data(split, trainer.config.run.eval_batch_size, trainer.mesh)
  return metrics.summarize(trainer.programs.evaluate(variables, *data), prefix)


def diverged(train_loss: float, num_classes: int) -> bool:
  """Whether an epoch's mean training loss says the run has diverged.

  Guessing uniformly scores ln(classes), about where an untrained network starts; a mean ten
  times worse than guessing is confidently wrong on most examples, which only a run whose
  updates blew up reaches (a healthy one falls below ln(classes) within its first epoch).
  """
  return bool(not np.isfinite(train_loss) or train_loss > DIVERGED_FACTOR * np.log(num_classes))
