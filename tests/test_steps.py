"""The model and the pure step functions, on fixed arrays."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import MNIST_INFO, tiny_config

from mlp.core import build, metrics, steps

pytestmark = pytest.mark.unit


def setup(tmp_path, overrides=None):
  config = tiny_config(tmp_path, overrides)
  model, variables = build.build_model(config, MNIST_INFO)
  return model, build.init_state(config, model, variables)


def batch(n: int = 32, seed: int = 0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
  return images, rng.integers(0, 10, n).astype(np.int32), np.ones(n, bool)


def test_model_maps_images_to_float32_logits(tmp_path):
  model, state = setup(tmp_path)
  probabilities = steps.probabilities(model, state.variables, batch(5)[0])
  assert probabilities.shape == (5, 10) and probabilities.dtype == jnp.float32
  np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_train_step_lowers_the_loss_on_its_batch(tmp_path):
  model, state = setup(tmp_path)
  images, labels, mask = batch()
  loss_before, _ = steps.loss_and_sums(state.params, model, state.model_state, images, labels, mask)
  step = jax.jit(lambda s: steps.train_step(model, s, images, labels, mask))
  for _ in range(5):
    state, _ = step(state)
  loss_after, _ = steps.loss_and_sums(state.params, model, state.model_state, images, labels, mask)
  assert int(state.step) == 5
  assert loss_after < loss_before


def test_masked_examples_carry_no_weight(tmp_path):
  model, state = setup(tmp_path)
  images, labels, mask = batch(8)
  mask[5:] = False
  padded_loss, (sums, _) = steps.loss_and_sums(
    state.params, model, state.model_state, images, labels, mask
  )
  loss, _ = steps.loss_and_sums(
    state.params, model, state.model_state, images[:5], labels[:5], mask[:5]
  )
  assert float(sums['count']) == 5
  np.testing.assert_allclose(padded_loss, loss, rtol=1e-6)


def test_evaluate_counts_every_example_with_a_batch_that_does_not_divide(tmp_path):
  import input_pipeline

  model, state = setup(tmp_path)
  images, labels, _ = batch(23)
  stacked = input_pipeline.padded_batches(input_pipeline.Split(images, labels, ()), 7)
  sums = steps.evaluate(model, state.variables, *stacked)
  _, (whole, _) = steps.loss_and_sums(
    state.params, model, state.model_state, images, labels, np.ones(23, bool)
  )
  assert set(sums) == {m.name for m in metrics.PER_EXAMPLE} | {metrics.COUNT}
  assert float(sums['count']) == 23
  for metric in metrics.PER_EXAMPLE:
    np.testing.assert_allclose(sums[metric.name], whole[metric.name], rtol=1e-5)


def test_top_1_accuracy_counts_ties_against_the_label():
  logits = jnp.array([[3.0, 1.0, 2.0], [1.0, 1.0, 1.0], [0.0, 2.0, 1.0]])
  labels = jnp.array([0, 1, 2])
  top_1 = next(m for m in metrics.PER_EXAMPLE if m.name == 'accuracy')
  np.testing.assert_array_equal(top_1.value(logits, labels), [1.0, 0.0, 0.0])


def test_summaries_divide_example_sums_by_the_count_and_keep_epoch_end_values():
  sums = {m.name: jnp.float32(i + 1) for i, m in enumerate(metrics.PER_EXAMPLE)}
  at_end = {m.name: jnp.float32(i + 0.5) for i, m in enumerate(metrics.LAST_BATCH)}
  summary = metrics.summarize(sums | {metrics.COUNT: jnp.float32(4)}, 'x_', at_end)
  assert summary == {
    **{f'x_{m.name}': (i + 1) / 4 for i, m in enumerate(metrics.PER_EXAMPLE)},
    **{m.name: i + 0.5 for i, m in enumerate(metrics.LAST_BATCH)},
  }
