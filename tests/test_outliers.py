"""Generated non-digits and their loss: shapes, range, reproducible per key, only the families
asked for; the loss is the cross-entropy toward uniform; off by default."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from input_pipeline import negatives
from input_pipeline.errors import UserError
from mlp.core import augment, outliers

pytestmark = pytest.mark.unit


@pytest.fixture(scope='module')
def digits():
  """Eight crude digits (a bar and a cap, like a 7), labels 0..7."""
  images = np.zeros((8, 28, 28, 1), np.uint8)
  images[:, 5:23, 13:16] = 255
  images[:, 5:8, 8:20] = 255
  return images, np.arange(8)


@pytest.fixture(scope='module')
def make():
  return jax.jit(negatives.negatives, static_argnums=(3, 4))


def test_every_family_makes_ink_in_range(digits, make):
  out = np.asarray(
    make(jax.random.key(0), *digits, 4 * len(negatives.FAMILIES), negatives.FAMILIES)
  )
  assert out.shape == (4 * len(negatives.FAMILIES), 28, 28, 1)
  assert out.min() >= 0 and out.max() <= 255
  per_family = out.reshape(len(negatives.FAMILIES), 4, -1)
  for name, images in zip(negatives.FAMILIES, per_family, strict=True):
    if name != 'paper':  # Paper may be blank; every drawing has ink inside the frame.
      assert (images.max(axis=1) > 128).all(), name
      assert images.reshape(4, 28, 28)[:, [0, -1]].max() < 128, name  # Fitted, not cut.


def test_same_key_same_images_other_key_other_images(digits, make):
  first, again, other = (
    make(jax.random.key(k), *digits, 22, negatives.FAMILIES) for k in (0, 0, 1)
  )
  np.testing.assert_array_equal(first, again)
  assert np.abs(np.asarray(first) - np.asarray(other)).mean() > 5


def test_held_out_families_are_never_drawn(digits, monkeypatch):
  drawn = []
  real = negatives.family
  monkeypatch.setattr(
    negatives, 'family', lambda name, *args: drawn.append(name) or real(name, *args)
  )
  trained = tuple(f for f in negatives.FAMILIES if f not in ('triangle', 'star'))
  negatives.negatives(jax.random.key(0), *digits, 20, trained)
  assert sorted(drawn) == sorted(trained)


def test_loss_is_cross_entropy_toward_uniform():
  flat, sure = jnp.zeros((1, 10)), jnp.array([[9.0] + [0.0] * 9])
  np.testing.assert_allclose(outliers.uniform_cross_entropy(flat), [np.log(10)], rtol=1e-6)
  assert outliers.uniform_cross_entropy(sure)[0] > np.log(10) + 1
  exposure = outliers.Exposure(0.5, 4, ('paper',))
  np.testing.assert_allclose(exposure.loss(flat), 0.5 * np.log(10), rtol=1e-6)


def test_threshold_keeps_the_share_asked():
  probabilities = np.stack([np.linspace(0.1, 1, 1000), np.zeros(1000)], 1)
  cut = outliers.threshold(probabilities, 0.99)
  assert np.mean(probabilities.max(1) >= cut) == pytest.approx(0.99, abs=0.002)


def test_off_by_default_so_the_notebook_config_is_unchanged():
  config = default.get_config()
  assert outliers.from_config(config.outliers, (28, 28, 1)) is None
  config.outliers.weight = 0.5
  with pytest.raises(UserError, match='outliers.weight'):
    outliers.from_config(config.outliers, (32, 32, 3))
  assert augment.from_config(config.augment) is None


def test_coarse_blurred_and_pen_distortions_keep_shape_and_range(digits):
  distortion = augment.Distortion(low_resolution=1.0, blur=1.0, stroke_width=1.0)
  out = np.asarray(jax.jit(distortion)(digits[0], jax.random.key(0)))
  assert out.shape == digits[0].shape
  assert out.min() >= -1e-3 and out.max() <= 255 + 1e-3
  assert np.abs(out - digits[0]).mean() > 5
