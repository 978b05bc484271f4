"""Test-time augmentation: the shifts move the digit and fill with background; the mean is fair."""

import jax.numpy as jnp
import numpy as np
import pytest

from mlp.core import tta

pytestmark = pytest.mark.unit


def test_shift_moves_content_and_fills_the_edge_with_background():
  images = jnp.arange(1, 13, dtype=jnp.float32).reshape(1, 3, 4, 1)
  right = tta.shift(images, 0, 1)[0, :, :, 0]
  np.testing.assert_array_equal(right, [[0, 1, 2, 3], [0, 5, 6, 7], [0, 9, 10, 11]])
  up = tta.shift(images, -1, 0)[0, :, :, 0]
  np.testing.assert_array_equal(up, [[5, 6, 7, 8], [9, 10, 11, 12], [0, 0, 0, 0]])


@pytest.mark.parametrize('views', sorted(tta.SHIFTS))
def test_averaged_logits_is_the_mean_over_the_views(views):
  """A linear 'network' of a digit with an empty border: each view's logits are known."""
  rng = np.random.default_rng(0)
  images = np.zeros((2, 6, 6, 1), np.float32)
  images[:, 1:5, 1:5] = rng.random((2, 4, 4, 1))
  weights = jnp.asarray(rng.random((36, 3)), jnp.float32)

  def logits_fn(x):
    return x.reshape(x.shape[0], -1) @ weights

  views_seen = [images] + [tta.shift(images, r, c) for r, c in tta.SHIFTS[views]]
  expected = np.mean([logits_fn(v) for v in views_seen], axis=0)
  assert len(views_seen) == views
  np.testing.assert_allclose(tta.averaged_logits(logits_fn, images, views), expected, rtol=1e-6)
  if views == 1:
    np.testing.assert_array_equal(tta.averaged_logits(logits_fn, images, 1), logits_fn(images))
