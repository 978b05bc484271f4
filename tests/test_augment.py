"""Distortions: shapes and values kept, reproducible per key, different across keys."""

import jax
import numpy as np
import pytest

from mlp.core import augment

pytestmark = pytest.mark.unit

STRONG = augment.Distortion(
  rotation=15.0, scale=0.15, shear=15.0, translation=3.0, elastic_alpha=34.0, elastic_sigma=4.0
)


@pytest.fixture(scope='module')
def images():
  return np.random.default_rng(0).integers(0, 256, (6, 28, 28, 1), np.uint8)


@pytest.fixture(scope='module')
def distort():
  return jax.jit(lambda images, key: STRONG(images, key))


def test_keeps_shape_and_value_range(images, distort):
  out = np.asarray(distort(images, jax.random.key(0)))
  assert out.shape == images.shape and out.dtype == np.float32
  assert out.min() >= 0.0 and out.max() <= 255.0 + 1e-3
  assert np.abs(out - images).mean() > 10.0  # Distorted, not copied.


def test_same_key_same_images_other_key_other_images(images, distort):
  first, again, other = (np.asarray(distort(images, jax.random.key(k))) for k in (0, 0, 1))
  np.testing.assert_array_equal(first, again)
  assert np.abs(first - other).mean() > 10.0


def test_each_image_gets_its_own_distortion(images, distort):
  copies = np.repeat(images[:1], len(images), axis=0)
  out = np.asarray(distort(copies, jax.random.key(0)))
  assert all(np.abs(out[i] - out[0]).mean() > 10.0 for i in range(1, len(out)))


def test_zero_ranges_are_the_identity(images):
  out = augment.Distortion()(images, jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(out), images.astype(np.float32))
