"""The optimizer fields: each update rule, clipping, accumulation and the average of the weights."""

import jax
import numpy as np
import optax
import pytest
from conftest import MNIST_INFO, tiny_config

from mlp.core import build, optimizer, steps

pytestmark = pytest.mark.unit


def batch(n: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
  return images, rng.integers(0, 10, n).astype(np.int32), np.ones(n, bool)


def trained(tmp_path, overrides: dict, batches: list, steps_per_epoch: int = 10):
  """The state after one train_step per batch, under tiny_config with overrides."""
  config = tiny_config(tmp_path, overrides)
  model, variables = build.build_model(config, MNIST_INFO, steps_per_epoch)
  state = build.init_state(config, model, variables)
  step = jax.jit(lambda s, *b: steps.train_step(model, s, *b))
  for b in batches:
    state, _ = step(state, *b)
  return model, state


def loss(model, state, data) -> float:
  return float(steps.loss_and_sums(state.params, model, state.model_state, *data)[0])


@pytest.mark.parametrize(
  'overrides',
  [
    {'optim.optimizer': 'adam'},
    {'optim.optimizer': 'adamw', 'optim.weight_decay': 0.01},
    {'optim.optimizer': 'sgd', 'optim.learning_rate': 0.05, 'optim.momentum': 0.9},
    {'optim.optimizer': 'sgd', 'optim.learning_rate': 0.05, 'optim.nesterov': True},
    {'optim.optimizer': 'sgd', 'optim.learning_rate': 0.05, 'optim.momentum': 0.0},
    {'optim.optimizer': 'lion', 'optim.learning_rate': 1e-4},
  ],
  ids=lambda o: '-'.join(f'{k.split(".")[1]}={v}' for k, v in o.items()),
)
def test_each_update_rule_lowers_the_loss(tmp_path, overrides):
  data = batch(32)
  model, before = trained(tmp_path, overrides, [])
  _, after = trained(tmp_path, overrides, [data] * 5)
  assert loss(model, after, data) < loss(model, before, data)


def test_rules_differ(tmp_path):
  data = [batch(32)] * 2
  params = [
    jax.tree.leaves(trained(tmp_path, {'optim.optimizer': name}, data)[1].params)[0]
    for name in ('adam', 'sgd', 'lion')
  ]
  assert not np.allclose(params[0], params[1]) and not np.allclose(params[0], params[2])


def test_the_default_optimizer_keeps_the_state_runs_saved_before_the_fields(tmp_path):
  """Old checkpoints restore: the default state is the plain injected Adam of before."""
  config = tiny_config(tmp_path)
  params = {'w': np.zeros((3, 2), np.float32)}
  new, _ = optimizer.make_optimizer(config.optim, 10)
  old = optax.chain(optax.inject_hyperparams(optax.adam)(learning_rate=1e-3))
  assert jax.tree.structure(new.init(params)) == jax.tree.structure(old.init(params))


def test_clipping_bounds_the_update(tmp_path):
  overrides = {'optim.optimizer': 'sgd', 'optim.momentum': 0.0, 'optim.learning_rate': 1.0}
  data = [batch(32)]
  _, start = trained(tmp_path, overrides, [])
  _, free = trained(tmp_path, overrides, data)
  _, clipped = trained(tmp_path, {**overrides, 'optim.clip_grad_norm': 0.01}, data)
  moved = optax.tree.norm(jax.tree.map(lambda a, b: a - b, clipped.params, start.params))
  assert float(moved) == pytest.approx(0.01, rel=1e-3)
  free_moved = optax.tree.norm(jax.tree.map(lambda a, b: a - b, free.params, start.params))
  assert float(free_moved) > 0.1


def test_accumulating_k_batches_of_b_over_k_is_one_step_of_b(tmp_path):
  images, labels, mask = batch(40)
  halves = [(images[:20], labels[:20], mask[:20]), (images[20:], labels[20:], mask[20:])]
  _, whole = trained(tmp_path, {'optim.batch_size': 40}, [(images, labels, mask)])
  _, accumulated = trained(
    tmp_path, {'optim.batch_size': 20, 'optim.accumulate_steps': 2}, halves, steps_per_epoch=20
  )
  _, one_half = trained(tmp_path, {'optim.batch_size': 20}, halves[:1])
  for a, b, c in zip(
    *(jax.tree.leaves(s.params) for s in (whole, accumulated, one_half)), strict=True
  ):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(a, c)


def test_the_average_of_the_weights_is_what_evaluation_uses(tmp_path):
  data = [batch(32, seed) for seed in range(4)]
  model, state = trained(tmp_path, {'optim.ema_decay': 0.5}, data)
  _, start = trained(tmp_path, {'optim.ema_decay': 0.5}, [])
  average = jax.tree.leaves(state.variables[0])
  params = jax.tree.leaves(state.params)
  initial = jax.tree.leaves(start.params)
  assert not np.allclose(average[0], params[0])
  # The average lies between where training started and where it is now.
  assert np.linalg.norm(average[0] - initial[0]) < np.linalg.norm(params[0] - initial[0])
  images = data[0][0]
  with_average = steps.probabilities(model, state.variables, images)
  with_params = steps.probabilities(model, (state.params, state.model_state), images)
  assert not np.allclose(with_average, with_params)


def test_onecycle_rises_then_falls(tmp_path):
  config = tiny_config(tmp_path, {'optim.schedule': 'onecycle', 'optim.warmup_epochs': 0.3})
  _, learning_rate = optimizer.make_optimizer(config.optim, 100)
  opt_state = optimizer.make_optimizer(config.optim, 100)[0].init({'w': np.zeros(2, np.float32)})
  rates = [float(learning_rate(opt_state, step)) for step in (1, 31, 100)]
  assert rates[0] < rates[1] and rates[2] < rates[0]
  assert rates[1] == pytest.approx(config.optim.learning_rate, rel=1e-3)
