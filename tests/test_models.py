"""The contract every registered model keeps, and every dataset: one cheap test each.

A model: it initialises for the dataset's shapes, a step lowers the loss on its batch, its state
(if any) moves in training and not in evaluation, trials of it train vmapped as they do alone,
and the exported model answers as the training code does. A dataset: its shapes and classes
come from tfds, its images are turned upright, and a step trains on it.
"""

import jax
import numpy as np
import pytest
from conftest import MNIST_INFO, tiny_config
from flax import nnx

import input_pipeline
from input_pipeline.errors import UserError
from mlp.core import build, configuration, models, steps
from mlp.core.models import cnn
from mlp.machinery import devices
from mlp.reader import export
from mlp.tools import sweep

pytestmark = pytest.mark.unit


def batch(info: input_pipeline.DatasetInfo, n: int = 8, seed: int = 0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, *info.image_shape), dtype=np.uint8)
  return images, rng.integers(0, info.num_classes, n).astype(np.int32), np.ones(n, bool)


def one_step(config, info, data):
  model, variables = build.build_model(config, info, steps_per_epoch=1)
  state = build.init_state(config, model, variables)
  return model, state, jax.jit(lambda s: steps.train_step(model, s, *data))(state)


# The speed record's network (configs/speedrun.py): 5x5 then 3x3 'VALID' convolutions, max-pool.
RECORD_CNN = {
  'cnn.conv_features': (24, 32),
  'cnn.kernel_sizes': (5, 3),
  'cnn.padding': 'VALID',
  'cnn.pool': 'max',
}


@pytest.mark.parametrize(
  ('name', 'fields'),
  [(name, {}) for name in sorted(models.REGISTRY)] + [('cnn', RECORD_CNN)],
  ids=[*sorted(models.REGISTRY), 'cnn-record'],
)
def test_model_contract(tmp_path, name, fields):
  config = tiny_config(tmp_path, {'model': name, **fields})
  data = batch(MNIST_INFO)
  model, state, (trained, sums) = one_step(config, MNIST_INFO, data)
  assert float(sums['count']) == len(data[1])
  loss = lambda s: steps.loss_and_sums(s.params, model, s.model_state, *data)[0]  # noqa: E731
  assert float(loss(trained)) < float(loss(state))

  # Other state moves with training passes and stays put in evaluation.
  if jax.tree.leaves(state.model_state):
    moved = jax.tree.map(lambda a, b: bool((a != b).any()), state.model_state, trained.model_state)
    assert any(jax.tree.leaves(moved))
    _, after_eval = steps.forward(model, trained.variables, data[0])
    assert jax.tree.all(jax.tree.map(np.array_equal, after_eval, trained.model_state))

  # Two trials vmapped in one program train as each does alone.
  rates = {'optim.learning_rate': (1e-3, 3e-3)}
  trials = [
    tiny_config(tmp_path, {'model': name, **fields, 'optim.learning_rate': lr})
    for lr in rates['optim.learning_rate']
  ]
  model, values, stacked = sweep.init_trials(trials, MNIST_INFO, steps_per_epoch=1)
  programs = sweep.trial_programs(model, values, devices.make_mesh())
  together, _ = programs.train_on_batches(stacked, *(x[None] for x in data))
  for i, trial in enumerate(trials):
    alone = one_step(trial, MNIST_INFO, data)[2][0]
    for vmapped, single in zip(
      jax.tree.leaves(together.params), jax.tree.leaves(alone.params), strict=True
    ):
      np.testing.assert_allclose(vmapped[i], single, rtol=2e-5, atol=1e-6)

  # The exported model answers as the training code does.
  exported = export.export(model, trained.variables, MNIST_INFO.image_shape)
  np.testing.assert_allclose(
    exported.call(data[0]), steps.probabilities(model, trained.variables, data[0]), atol=1e-5
  )


@pytest.mark.parametrize(
  ('name', 'shape', 'is_digits'),
  [
    ('mnist', (28, 28, 1), True),
    ('fashion_mnist', (28, 28, 1), False),
    ('emnist/digits', (28, 28, 1), True),
    ('cifar10', (32, 32, 3), False),
  ],
)
def test_dataset_contract(tmp_path, mock_dataset, name, shape, is_digits):
  mock_dataset(name)
  config = tiny_config(tmp_path, {'data.name': name})
  splits = input_pipeline.load_splits(config)
  info = splits.info
  assert info.image_shape == shape and info.num_classes == 10 and info.is_digits == is_digits
  assert len(splits.train) + len(splits.validation) == 60 and len(splits.test) == 60
  data = (splits.train.images[:8], splits.train.labels[:8], np.ones(8, bool))
  _, state, (trained, _) = one_step(config, info, data)
  assert int(trained.step) == 1


def test_emnist_images_are_turned_upright_where_they_load():
  stored = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28, 1)
  upright = input_pipeline.upright('emnist/digits', stored)
  np.testing.assert_array_equal(upright[1, :, :, 0], stored[1, :, :, 0].T)
  assert input_pipeline.upright('mnist', stored) is stored


def test_record_cnn_shrinks_28_to_5_and_max_pools_as_the_window_op_does(tmp_path):
  config = tiny_config(tmp_path, {'model': 'cnn', **RECORD_CNN})
  network = models.CNN(config.cnn, (28, 28, 1), 10, dtype=jax.numpy.float32, rngs=nnx.Rngs(0))
  assert network.hidden.in_features == 5 * 5 * 32  # 28 -5+1-> 24 /2-> 12 -3+1-> 10 /2-> 5.
  x = jax.random.normal(jax.random.key(0), (2, 7, 10, 3))  # An odd side drops its last row.
  np.testing.assert_array_equal(
    cnn.max_pool_2x2(x), nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))
  )


def test_a_cnn_that_shrinks_the_image_away_is_refused_in_one_line(tmp_path):
  fields = {**RECORD_CNN, 'cnn.conv_features': (8, 8, 8, 8)}  # 28 -> 12 -> 5 -> 1 -> nothing.
  config = tiny_config(tmp_path, {'model': 'cnn', **fields})
  with pytest.raises(UserError, match='cnn.kernel_sizes'):
    models.CNN(config.cnn, (28, 28, 1), 10, dtype=jax.numpy.float32, rngs=nnx.Rngs(0))


def test_every_model_declares_its_fields_in_the_schema():
  for name, model in models.REGISTRY.items():
    for field in model.FIELDS:
      assert f'{name}.{field}' in configuration.SCHEMA
