"""Devices: batch sizes that split, joining several processes, and the accelerator settings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import MNIST_INFO, tiny_config

from input_pipeline.errors import UserError
from mlp.core import build, steps, train
from mlp.machinery import checkpoint, devices

pytestmark = pytest.mark.unit


def test_batch_size_that_does_not_split_names_the_nearest_that_do(monkeypatch):
  monkeypatch.setattr(jax, 'device_count', lambda: 8)
  devices.check_batch_size(96)
  with pytest.raises(UserError, match=r'^batch_size=100 .* 8 devices; .* such as 96 or 104\.$'):
    devices.check_batch_size(100)
  with pytest.raises(UserError, match=r'^eval_batch_size=3 .* such as 8 or 16\.$'):
    devices.check_batch_size(3, 'eval_batch_size')


@pytest.fixture
def initialize_calls(monkeypatch) -> list[tuple]:
  """The arguments jax.distributed.initialize would get, with no distributed environment."""
  for name in (devices.ENV_COORDINATOR_ADDRESS, devices.ENV_NUM_PROCESSES, devices.ENV_PROCESS_ID):
    monkeypatch.delenv(name, raising=False)
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda *args, **kwargs: calls.append(args))
  return calls


def test_one_process_unless_configured(initialize_calls):
  assert devices.initialize_distributed() is False
  assert initialize_calls == []


def test_arguments_override_the_environment(initialize_calls, monkeypatch):
  monkeypatch.setenv(devices.ENV_COORDINATOR_ADDRESS, 'host0:1234')
  monkeypatch.setenv(devices.ENV_NUM_PROCESSES, '4')
  monkeypatch.setenv(devices.ENV_PROCESS_ID, '3')
  assert devices.initialize_distributed() is True
  assert devices.initialize_distributed('localhost:5678', 2, 1) is True
  assert initialize_calls == [('host0:1234', 4, 3), ('localhost:5678', 2, 1)]


def test_auto_leaves_the_cluster_to_jax(initialize_calls):
  assert devices.initialize_distributed(auto=True) is True
  assert initialize_calls == [(None, None, None)]


def test_missing_or_bad_settings_are_one_line(monkeypatch, initialize_calls):
  def refuse(*args, **kwargs):
    raise ValueError('coordinator_address should be defined.')

  monkeypatch.setattr(jax.distributed, 'initialize', refuse)
  with pytest.raises(UserError, match='coordinator_address should be defined.*--process_id') as e:
    devices.initialize_distributed(num_processes=2, process_id=0)
  assert '\n' not in str(e.value)
  monkeypatch.setenv(devices.ENV_NUM_PROCESSES, 'two')
  with pytest.raises(UserError, match="invalid literal for int.*'two'"):
    devices.initialize_distributed()


def test_replicate_places_arrays_and_keys_on_every_device():
  tree = {'weights': np.arange(6.0).reshape(2, 3), 'key': jax.random.key(7)}
  placed = devices.replicate(tree, devices.make_mesh())
  for leaf in jax.tree.leaves(placed):
    assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == jax.device_count()
  np.testing.assert_array_equal(placed['weights'], tree['weights'])
  key_data = jax.random.key_data
  np.testing.assert_array_equal(key_data(placed['key']), key_data(tree['key']))


def test_bfloat16_computes_in_bfloat16_and_keeps_float32_parameters(tmp_path, mock_mnist):
  config = tiny_config(tmp_path, {'run.compute_dtype': 'bfloat16'})
  model, (params, model_state) = build.build_model(config, MNIST_INFO)
  images, labels, mask = jnp.zeros((2, 28, 28, 1), jnp.uint8), jnp.zeros(2, jnp.int32), jnp.ones(2)
  program = jax.make_jaxpr(
    lambda p: steps.loss_and_sums(p, model, model_state, images, labels, mask)
  )(params)
  assert 'dot_general' in str(program) and 'bf16[2,16]' in str(program)
  result = train.train_and_evaluate(config, tmp_path / 'run')
  assert np.isfinite(result['records'][0]['train_loss']) and np.isfinite(result['test_loss'])
  *_, trained = checkpoint.restore_for_inference(tmp_path / 'run')
  assert {leaf.dtype for leaf in jax.tree.leaves(trained)} == {jnp.dtype(jnp.float32)}


def test_matmul_precision_reaches_the_compiled_programs(tmp_path):
  before = jax.config.jax_default_matmul_precision
  try:
    devices.configure_runtime(tiny_config(tmp_path, {'run.matmul_precision': 'highest'}))
    x = jnp.ones((4, 4))
    assert 'precision = [HIGHEST, HIGHEST]' in jax.jit(jnp.dot).lower(x, x).as_text()
  finally:
    jax.config.update('jax_default_matmul_precision', before)
