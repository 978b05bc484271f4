"""What training one config needs, built once (compiled programs, data on the devices), and
calls of several training steps at once, through which the loop, benchmark and sweep train.

A sweep trains trials in one program by passing `compile_programs` a wrapper that vmaps each
step function over them (mlp/tools/sweep.py); nothing here knows about trials.
"""

import dataclasses
import functools
from collections.abc import Callable

import jax
import ml_collections
import numpy as np

import input_pipeline
from mlp.core import build, metrics, steps
from mlp.core.steps import TrainState
from mlp.machinery import devices, pacing

STATISTICS_EXAMPLES = 2_000  # Training images over which BatchNorm's statistics are measured.


@dataclasses.dataclass(frozen=True)
class Programs:
  """The jitted functions of one model on one mesh; each compiles once per input shape."""

  mesh: jax.sharding.Mesh
  train_on_indices: Callable
  train_on_batches: Callable
  last_batch_metrics: Callable
  measure_statistics: Callable
  evaluate: Callable
  probabilities: Callable


def compile_programs(
  model: steps.Model, mesh, wrap: Callable[[Callable], Callable] | None = None
) -> Programs:
  """The programs of one model; wrap(f) turns each step function f(model, ...) into f(...).

  By default the model is bound; a sweep's wrap binds one model per trial under jax.vmap.
  """
  wrap = wrap or (lambda function: functools.partial(function, model))
  replicated = devices.replicated(mesh)
  train_kwargs = dict(donate_argnums=0, out_shardings=(replicated, replicated))
  return Programs(
    mesh=mesh,
    train_on_indices=jax.jit(wrap(steps.train_on_indices), **train_kwargs),
    train_on_batches=jax.jit(wrap(steps.train_on_batches), **train_kwargs),
    last_batch_metrics=jax.jit(wrap(steps.last_batch_metrics), out_shardings=replicated),
    measure_statistics=jax.jit(
      wrap(steps.measure_statistics), donate_argnums=0, out_shardings=replicated
    ),
    evaluate=jax.jit(wrap(steps.evaluate), out_shardings=replicated),
    probabilities=jax.jit(
      lambda variables, images: jax.lax.map(
        functools.partial(steps.probabilities, model, variables), images
      ),
      out_shardings=replicated,
    ),
  )


@dataclasses.dataclass(frozen=True)
class Trainer:
  """The programs and data of one config (or of sweep trials that share one program)."""

  config: ml_collections.ConfigDict
  programs: Programs
  train: input_pipeline.Split
  train_on_device: tuple[jax.Array, jax.Array] | None  # Where run.placement is 'device'.
  validation: tuple[jax.Array, ...] | None  # Padded batches on the devices; None: none given.
  steps_per_epoch: int
  steps_per_call: int  # The most steps one call runs: mlp/machinery/pacing.py chooses it.

  @property
  def mesh(self) -> jax.sharding.Mesh:
    return self.programs.mesh


def steps_per_epoch(config: ml_collections.ConfigDict, train: input_pipeline.Split) -> int:
  """Batches in an epoch: the last one is padded and masked."""
  return -(-len(train) // config.optim.batch_size)


def last_step(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """Where training ends: optim.num_epochs may be a fraction (0.8: four fifths of an epoch)."""
  return max(round(config.optim.num_epochs * steps_per_epoch), 1)


def setup(
  config: ml_collections.ConfigDict,
  info: input_pipeline.DatasetInfo,
  train: input_pipeline.Split,
  validation: input_pipeline.Split | None = None,
) -> tuple[Trainer, TrainState]:
  """The trainer of one config and its initial train state, replicated on the devices."""
  model, variables = build.build_model(config, info, steps_per_epoch(config, train))
  state = build.init_state(config, model, variables)
  mesh = devices.make_mesh()
  return make_trainer(config, compile_programs(model, mesh), state, train, validation)


def make_trainer(
  config: ml_collections.ConfigDict,
  programs: Programs,
  state: TrainState,
  train: input_pipeline.Split,
  validation: input_pipeline.Split | None = None,
) -> tuple[Trainer, TrainState]:
  """Places the data and the state on the devices and chooses how many steps a call runs."""
  mesh = programs.mesh
  on_device = None
  if config.run.placement == 'device':
    replicated = devices.replicated(mesh)
    on_device = (devices.put(train.images, replicated), devices.put(train.labels, replicated))
  per_epoch = steps_per_epoch(config, train)
  trainer = Trainer(
    config=config,
    programs=programs,
    train=train,
    train_on_device=on_device,
    validation=None if validation is None else place_eval_data(config, validation, mesh),
    steps_per_epoch=per_epoch,
    steps_per_call=per_epoch,
  )
  state = devices.replicate(state, mesh)
  timer = pacing.timer(functools.partial(call, trainer), state, batches(trainer, 0, per_epoch))
  chunk = pacing.steps_per_call(config, per_epoch, timer)
  return dataclasses.replace(trainer, steps_per_call=chunk), state


def place_eval_data(config, split: input_pipeline.Split, mesh) -> tuple[jax.Array, ...]:
  batches = input_pipeline.padded_batches(split, config.run.eval_batch_size)
  return tuple(devices.put(x, devices.batch_sharded(mesh, 1)) for x in batches)


@functools.lru_cache(maxsize=2)
def _epoch_order(num_examples: int, batch_size: int, seed: int, epoch: int):
  return input_pipeline.epoch_order(num_examples, batch_size, seed, epoch)


def batches(trainer: Trainer, step: int, count: int) -> tuple[np.ndarray, np.ndarray]:
  """Indices and mask (count, batch) of global steps step..step+count-1, within one epoch."""
  config = trainer.config
  epoch, first = divmod(step, trainer.steps_per_epoch)
  indices, mask = _epoch_order(
    len(trainer.train), config.optim.batch_size, config.data.seed, epoch + 1
  )
  return indices[first : first + count], mask[first : first + count]


def call(trainer: Trainer, state: TrainState, indices: np.ndarray, mask: np.ndarray):
  """One jitted call training the batches of indices and mask, both (steps, batch)."""
  programs = trainer.programs
  sharding = devices.batch_sharded(programs.mesh, 1)
  if trainer.train_on_device is not None:
    placed = (devices.put(x, sharding) for x in (indices, mask))
    return programs.train_on_indices(state, *trainer.train_on_device, *placed)
  data = (trainer.train.images[indices], trainer.train.labels[indices], mask)
  return programs.train_on_batches(state, *(devices.put(x, sharding) for x in data))


def train_steps(
  trainer: Trainer, state: TrainState, step: int, count: int
) -> tuple[TrainState, metrics.Sums]:
  """Trains global steps step..step+count-1 (within one epoch) in one call; their metric sums."""
  return call(trainer, state, *batches(trainer, step, count))


def last_batch_metrics(trainer: Trainer, state: TrainState, step: int) -> metrics.Sums:
  """metrics.LAST_BATCH of the state after `step` steps, on the batch of its last step."""
  indices, mask = (x[0] for x in batches(trainer, step - 1, 1))
  images, labels = trainer.train.images[indices], trainer.train.labels[indices]
  sharding = devices.batch_sharded(trainer.mesh, 0)
  placed = (devices.put(x, sharding) for x in (images, labels, mask))
  return trainer.programs.last_batch_metrics(state, *placed)


def measure_statistics(trainer: Trainer, state: TrainState) -> TrainState:
  """The state with BatchNorm's statistics measured on the first STATISTICS_EXAMPLES training
  images (steps.measure_statistics), before each evaluation; unchanged without BatchNorm."""
  if not jax.tree.leaves(state.model_state):
    return state
  batch = trainer.config.optim.batch_size
  count = max(batch, STATISTICS_EXAMPLES // batch * batch)  # Whole batches split over devices.
  images = trainer.train.images[np.arange(count) % len(trainer.train)]
  return trainer.programs.measure_statistics(
    state, devices.put(images, devices.batch_sharded(trainer.mesh, 0))
  )


def validate(trainer: Trainer, variables: steps.Variables) -> dict:
  """Validation metric means."""
  return metrics.summarize(trainer.programs.evaluate(variables, *trainer.validation), 'val_')
