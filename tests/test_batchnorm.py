"""A model with state (the ResNet's BatchNorm statistics): resumed bit-exactly, and averaged
over data-parallel devices as one device computes them."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import MNIST_INFO, ROOT, tiny_config

from mlp.core import build, configuration, steps, train
from mlp.machinery import checkpoint, devices

pytestmark = pytest.mark.integration

RESNET = {'model': 'resnet', 'optim.num_epochs': 2}


def test_a_resumed_run_carries_the_statistics_bit_exactly(tmp_path, mock_mnist):
  config = tiny_config(tmp_path, RESNET)
  straight = train.train_and_evaluate(config, tmp_path / 'straight')
  configuration.assign(config, 'optim.num_epochs', 1)
  train.train_and_evaluate(config, tmp_path / 'run')
  configuration.assign(config, 'optim.num_epochs', 2)
  resumed = train.train_and_evaluate(config, tmp_path / 'run')
  assert resumed == {**straight, 'records': resumed['records']}
  *_, (_, resumed_state) = checkpoint.restore_for_inference(tmp_path / 'run')
  *_, (_, straight_state) = checkpoint.restore_for_inference(tmp_path / 'straight')
  assert jax.tree.leaves(resumed_state)
  for a, b in zip(jax.tree.leaves(resumed_state), jax.tree.leaves(straight_state), strict=True):
    np.testing.assert_array_equal(a, b)


def test_measured_statistics_make_evaluation_what_training_computes(tmp_path):
  """After measure_statistics on some images, evaluating them (running statistics) gives the
  logits that training mode (their own statistics) gives, and training's statistics change."""
  config = tiny_config(tmp_path, RESNET)
  model, variables = build.build_model(config, MNIST_INFO, steps_per_epoch=1)
  state = build.init_state(config, model, variables)
  images = np.random.default_rng(0).integers(0, 256, (64, 28, 28, 1), np.uint8)
  measured = jax.jit(lambda s, x: steps.measure_statistics(model, s, x))(state, images)
  evaluated, _ = steps.forward(model, measured.variables, images)
  trained, _ = steps.forward(model, state.variables, images, train=True)
  np.testing.assert_allclose(evaluated, trained, rtol=1e-4, atol=1e-4)
  before, _ = steps.forward(model, state.variables, images)
  assert not np.allclose(before, trained, atol=1e-2), 'the initial statistics already fit'
  assert jax.tree.all(jax.tree.map(np.array_equal, measured.params, state.params))


def statistics_after_one_step(tmp_path) -> list[np.ndarray]:
  """The BatchNorm statistics after one step on a fixed batch of 16, on all devices."""
  config = tiny_config(tmp_path, RESNET)
  model, variables = build.build_model(config, MNIST_INFO, steps_per_epoch=1)
  mesh = devices.make_mesh()
  state = devices.replicate(build.init_state(config, model, variables), mesh)
  rng = np.random.default_rng(0)
  batch = (
    rng.integers(0, 256, (16, 28, 28, 1), np.uint8),
    rng.integers(0, 10, 16).astype(np.int32),
    np.ones(16, bool),
  )
  sharded = [devices.put(x, devices.batch_sharded(mesh)) for x in batch]
  state, _ = jax.jit(lambda s, *b: steps.train_step(model, s, *b))(state, *sharded)
  return [np.asarray(leaf) for leaf in jax.tree.leaves(state.model_state)]


def test_statistics_on_four_devices_are_those_of_one(tmp_path):
  script = (
    'import json, sys; from pathlib import Path\n'
    'sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]\n'
    'import jax; from test_batchnorm import statistics_after_one_step\n'
    'assert jax.device_count() == 4\n'
    'print(json.dumps([s.tolist() for s in statistics_after_one_step(Path(sys.argv[2]))]))'
  )
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}
  result = subprocess.run(
    [sys.executable, '-c', script, str(ROOT), str(tmp_path)],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  four = json.loads(result.stdout.splitlines()[-1])
  one = statistics_after_one_step(tmp_path)
  assert len(four) == len(one) > 0
  for a, b in zip(four, one, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
