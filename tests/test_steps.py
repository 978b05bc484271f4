"""The model and the pure step functions, on fixed arrays."""

import jax
import jax.numpy as jnp
import numpy as np
from conftest import MNIST_INFO, tiny_config

from mlp.core import build, steps


def setup(tmp_path, overrides=None):
  config = tiny_config(tmp_path, overrides)
  model, params = build.build_model(config, MNIST_INFO)
  return model, build.init_state(config, model, params)


def batch(n: int = 32, seed: int = 0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
  return images, rng.integers(0, 10, n).astype(np.int32), np.ones(n, bool)


def test_model_maps_images_to_float32_logits(tmp_path):
  model, state = setup(tmp_path)
  probabilities = steps.probabilities(model, state.params, batch(5)[0])
  assert probabilities.shape == (5, 10) and probabilities.dtype == jnp.float32
  np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_train_step_lowers_the_loss_on_its_batch(tmp_path):
  model, state = setup(tmp_path)
  images, labels, mask = batch()
  loss_before, _ = steps.loss_and_sums(state.params, model, images, labels, mask)
  step = jax.jit(lambda s: steps.train_step(model, s, images, labels, mask))
  for _ in range(5):
    state, _ = step(state)
  loss_after, _ = steps.loss_and_sums(state.params, model, images, labels, mask)
  assert int(state.step) == 5
  assert loss_after < loss_before


def test_masked_examples_carry_no_weight(tmp_path):
  model, state = setup(tmp_path)
  images, labels, mask = batch(8)
  mask[5:] = False
  padded_loss, sums = steps.loss_and_sums(state.params, model, images, labels, mask)
  loss, _ = steps.loss_and_sums(state.params, model, images[:5], labels[:5], mask[:5])
  assert float(sums['count']) == 5
  np.testing.assert_allclose(padded_loss, loss, rtol=1e-6)


def test_evaluate_counts_every_example_with_a_batch_that_does_not_divide(tmp_path):
  import input_pipeline

  model, state = setup(tmp_path)
  images, labels, _ = batch(23)
  stacked = input_pipeline.padded_batches(input_pipeline.Split(images, labels, ()), 7)
  sums = steps.evaluate(model, state.params, *stacked)
  _, whole = steps.loss_and_sums(state.params, model, images, labels, np.ones(23, bool))
  assert float(sums['count']) == 23
  np.testing.assert_allclose(
    [sums['loss'], sums['correct']], [whole['loss'], whole['correct']], rtol=1e-5
  )
