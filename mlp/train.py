"""The training loop: epochs, evaluation, logging and metrics.jsonl around the jitted steps."""

import dataclasses
import functools
import json
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

import input_pipeline
from mlp import configuration, devices, steps
from mlp.model import MLP
from mlp.optimizer import make_optimizer
from mlp.steps import Sums, TrainState

METRICS_FILE = 'metrics.jsonl'


def build_model(config: ml_collections.ConfigDict) -> tuple[steps.Model, nnx.State]:
  """The static model (structure, optimizer) and freshly initialised parameters."""
  network = MLP(
    config.hidden_sizes,
    config.activation,
    compute_dtype=config.compute_dtype,
    rngs=nnx.Rngs(params=jax.random.key(config.seed)),
  )
  graphdef, params = nnx.split(network, nnx.Param)
  return steps.Model(graphdef, make_optimizer(config), config.dropout_rate), params


def init_state(config: ml_collections.ConfigDict, model: steps.Model, params) -> TrainState:
  dropout_key = jax.random.fold_in(jax.random.key(config.seed), 1)
  return TrainState(
    step=np.zeros((), np.int32),
    params=params,
    opt_state=model.optimizer.init(params),
    rng=dropout_key,
  )


@dataclasses.dataclass(frozen=True)
class Programs:
  """The jitted functions of one model on one mesh; each compiles once per input shape."""

  mesh: jax.sharding.Mesh
  train_on_indices: callable
  train_on_batches: callable
  evaluate: callable
  epoch_order: callable


def compile_programs(model: steps.Model, mesh) -> Programs:
  replicated = devices.replicated(mesh)
  train_kwargs = dict(donate_argnums=0, out_shardings=(replicated, replicated))
  return Programs(
    mesh=mesh,
    train_on_indices=jax.jit(functools.partial(steps.train_on_indices, model), **train_kwargs),
    train_on_batches=jax.jit(functools.partial(steps.train_on_batches, model), **train_kwargs),
    evaluate=jax.jit(functools.partial(steps.evaluate, model), out_shardings=replicated),
    epoch_order=jax.jit(
      steps.epoch_order, static_argnums=(2, 3), out_shardings=devices.batch_sharded(mesh, 1)
    ),
  )


@dataclasses.dataclass(frozen=True)
class TrainData:
  """The training split where the chosen placement wants it, plus the key of its order."""

  split: input_pipeline.Split
  on_device: tuple[jax.Array, jax.Array] | None
  data_key: jax.Array


def place_train_data(config, split: input_pipeline.Split, mesh) -> TrainData:
  on_device = None
  if config.placement == 'device':
    replicated = devices.replicated(mesh)
    on_device = (devices.put(split.images, replicated), devices.put(split.labels, replicated))
  return TrainData(split, on_device, jax.random.key(config.data_seed))


def place_eval_data(split: input_pipeline.Split, batch_size: int, mesh) -> tuple[jax.Array, ...]:
  sharding = devices.batch_sharded(mesh, 1)
  return tuple(devices.put(x, sharding) for x in input_pipeline.padded_batches(split, batch_size))


def run_epoch(config, programs: Programs, state: TrainState, data: TrainData, epoch: int):
  """Trains one epoch in calls of config.steps_per_call steps; returns state and metric sums.

  Nothing here waits for the device: the sums are device arrays read by the caller.
  """
  indices, mask = programs.epoch_order(data.data_key, epoch, len(data.split), config.batch_size)
  chunk = config.steps_per_call or indices.shape[0]
  total = steps.zero_sums()
  if config.placement == 'host':
    indices, mask = np.asarray(indices), np.asarray(mask)
    sharding = devices.batch_sharded(programs.mesh, 1)
  for start in range(0, indices.shape[0], chunk):
    rows = slice(start, start + chunk)
    if config.placement == 'device':
      state, sums = programs.train_on_indices(state, *data.on_device, indices[rows], mask[rows])
    else:
      batch = (data.split.images[indices[rows]], data.split.labels[indices[rows]], mask[rows])
      state, sums = programs.train_on_batches(state, *(devices.put(x, sharding) for x in batch))
    total = steps.add_sums(total, sums)
  return state, total


def summarize(sums: Sums, prefix: str = '') -> dict[str, float]:
  loss, correct, count = (float(x) for x in jax.device_get(sums))
  return {f'{prefix}loss': loss / count, f'{prefix}accuracy': correct / count}


def default_workdir(config_name: str) -> Path:
  return Path('runs') / f'{config_name}-{time.strftime("%Y%m%d-%H%M%S")}'


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
  """Trains, evaluating on validation each epoch and on test at the end.

  Returns the per-epoch records and the final test metrics, as written to metrics.jsonl.
  """
  configuration.validate(config)
  devices.check_batch_size(config.batch_size)
  devices.check_batch_size(config.eval_batch_size, 'eval_batch_size')
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  configuration.save(config, workdir)

  splits = input_pipeline.load_splits(config)
  logging.info(
    'Data: %d train, %d validation, %d test examples.',
    len(splits.train),
    len(splits.validation),
    len(splits.test),
  )
  mesh = devices.make_mesh()
  model, params = build_model(config)
  programs = compile_programs(model, mesh)
  state = jax.device_put(init_state(config, model, params), devices.replicated(mesh))
  train_data = place_train_data(config, splits.train, mesh)
  validation = place_eval_data(splits.validation, config.eval_batch_size, mesh)
  test = place_eval_data(splits.test, config.eval_batch_size, mesh)
  steps_per_epoch = -(-len(splits.train) // config.batch_size)

  records = []
  with open(workdir / METRICS_FILE, 'a') as metrics_file:
    for epoch in range(1, config.num_epochs + 1):
      start = time.perf_counter()
      state, train_sums = run_epoch(config, programs, state, train_data, epoch)
      val_sums = programs.evaluate(state.params, *validation)
      record = {'epoch': epoch, **summarize(train_sums, 'train_'), **summarize(val_sums, 'val_')}
      seconds = time.perf_counter() - start
      record.update(epoch_seconds=seconds, examples_per_sec=len(splits.train) / seconds)
      logging.info(
        'Epoch %d/%d - %d steps - %.2fs - %.1fms/step - loss: %.4f - accuracy: %.4f'
        ' - val_loss: %.4f - val_accuracy: %.4f',
        epoch,
        config.num_epochs,
        steps_per_epoch,
        seconds,
        1000 * seconds / steps_per_epoch,
        record['train_loss'],
        record['train_accuracy'],
        record['val_loss'],
        record['val_accuracy'],
      )
      metrics_file.write(json.dumps(record) + '\n')
      records.append(record)
    test_metrics = summarize(programs.evaluate(state.params, *test), 'test_')
    logging.info(
      'Test loss: %.4f - Test accuracy: %.4f',
      test_metrics['test_loss'],
      test_metrics['test_accuracy'],
    )
    metrics_file.write(json.dumps(test_metrics) + '\n')
  return {'epochs': records, **test_metrics}
