"""Random distortions of training images, computed on the device inside the jitted step.

Each image gets its own random affine map (rotation, x and y scale, shear, translation) and an
elastic distortion (Simard et al. 2003: a random displacement field smoothed by a Gaussian),
and is resampled bilinearly with jax.scipy.ndimage.map_coordinates. For a reader of coarse scans
and thin or thick pens, it can then lower an image's resolution (a random side down to
MIN_SIDE pixels and back), blur it and thin or thicken its strokes by a pixel. Everything is a
pure function of the images and a key, so a seed reproduces the same distortions.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

MIN_SIDE = 7  # The coarsest resolution low_resolution draws, in pixels a side.


@dataclasses.dataclass(frozen=True)
class Distortion:
  """Ranges of the random distortions; each is drawn uniformly from [-range, range]."""

  rotation: float = 0.0  # Degrees.
  scale: float = 0.0  # Relative change of each axis' size: 0.1 draws factors in [0.9, 1.1].
  shear: float = 0.0  # Degrees.
  translation: float = 0.0  # Pixels along each axis.
  elastic_alpha: float = 0.0  # Scale of the elastic displacement field, in pixels.
  elastic_sigma: float = 4.0  # Smoothness (Gaussian sigma, pixels) of that field.
  low_resolution: float = 0.0  # Share of images seen at a side drawn in [MIN_SIDE, H].
  blur: float = 0.0  # Gaussian blur, sigma drawn in [0, blur] pixels per image.
  stroke_width: float = 0.0  # Share of images whose strokes thin or thicken by a pixel.

  def __call__(self, images: jax.Array, key: jax.Array) -> jax.Array:
    """Distorted images, float32 in the input's value range, of the input's shape (N, H, W, C).

    Every channel of an image moves with the same map.
    """
    affine_key, elastic_key, coarse_key, blur_key, stroke_key = jax.random.split(key, 5)
    num, height, width = images.shape[:3]
    rows, cols = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing='ij')
    center = jnp.array([(height - 1) / 2, (width - 1) / 2])
    grid = jnp.stack([rows, cols]).reshape(2, -1) - center[:, None]  # (2, H*W), centred.
    # Output pixel p samples the input at A^-1 (p - t) + center: A maps input to output.
    inverse, shift = self._affine(affine_key, num)
    coords = inverse @ (grid[None] - shift[:, :, None]) + center[None, :, None]
    coords = coords.reshape(num, 2, height, width)
    if self.elastic_alpha:
      coords = coords + self._elastic_field(elastic_key, num, height, width)

    def resample(image, image_coords):
      return jax.scipy.ndimage.map_coordinates(image, list(image_coords), order=1, mode='constant')

    per_channel = jax.vmap(resample, in_axes=(-1, None), out_axes=-1)
    images = jax.vmap(per_channel)(images.astype(jnp.float32), coords)
    if self.low_resolution:
      images = _coarse(images, coarse_key, self.low_resolution)
    if self.blur:
      sigma = jax.random.uniform(blur_key, (num,), maxval=self.blur)
      images = _blur(images, sigma)
    if self.stroke_width:
      images = _pen(images, stroke_key, self.stroke_width)
    return images

  def _affine(self, key: jax.Array, num: int) -> tuple[jax.Array, jax.Array]:
    """Per image, the inverse 2x2 linear part (N, 2, 2) and the translation (N, 2)."""
    keys = jax.random.split(key, 4)

    def uniform(k, limit, shape=(num,)):
      return jax.random.uniform(k, shape, minval=-limit, maxval=limit)

    angle = jnp.deg2rad(uniform(keys[0], self.rotation))
    shear = jnp.deg2rad(uniform(keys[1], self.shear))
    scale = 1.0 + uniform(keys[2], self.scale, (num, 2))
    shift = uniform(keys[3], self.translation, (num, 2))
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    rotate = jnp.stack([jnp.stack([cos, -sin], -1), jnp.stack([sin, cos], -1)], -2)
    one, zero = jnp.ones(num), jnp.zeros(num)
    shear_matrix = jnp.stack([jnp.stack([one, zero], -1), jnp.stack([jnp.tan(shear), one], -1)], -2)
    linear = rotate @ shear_matrix * scale[:, None, :]  # Scale the axes, shear, then rotate.
    return jnp.linalg.inv(linear), shift

  def _elastic_field(self, key: jax.Array, num: int, height: int, width: int) -> jax.Array:
    """Displacements (N, 2, H, W): uniform noise in [-1, 1] smoothed by a Gaussian, times alpha.

    The smoothing is a separable convolution with zero padding, written as two small
    matrix products.
    """
    noise = jax.random.uniform(key, (num, 2, height, width), minval=-1.0, maxval=1.0)
    smooth_rows, smooth_cols = (self._gaussian_matrix(n) for n in (height, width))
    return self.elastic_alpha * (smooth_rows @ noise @ smooth_cols.T)

  def _gaussian_matrix(self, size: int) -> jax.Array:
    offsets = jnp.arange(size)[:, None] - jnp.arange(size)[None, :]
    weights = jnp.exp(-0.5 * (offsets / self.elastic_sigma) ** 2)
    return weights / (jnp.sqrt(2 * jnp.pi) * self.elastic_sigma)

  @property
  def enabled(self) -> bool:
    return any(
      (self.rotation, self.scale, self.shear, self.translation, self.elastic_alpha)
      + (self.low_resolution, self.blur, self.stroke_width)
    )


def _gaussians(sigma: jax.Array, size: int) -> jax.Array:
  """Per sigma (N,), a (size, size) matrix that blurs along one axis; sigma 0 is the identity."""
  offsets = (jnp.arange(size)[:, None] - jnp.arange(size)[None, :]).astype(jnp.float32)
  weights = jnp.exp(-0.5 * (offsets[None] / jnp.maximum(sigma[:, None, None], 1e-3)) ** 2)
  return weights / weights.sum(-1, keepdims=True)


def _blur(images: jax.Array, sigma: jax.Array) -> jax.Array:
  """Images (N, H, W, C) each blurred by its own Gaussian sigma (N,), separably."""
  rows, cols = _gaussians(sigma, images.shape[1]), _gaussians(sigma, images.shape[2])
  return jnp.einsum('nij,njkc,nlk->nilc', rows, images, cols)


def _coarse(images: jax.Array, key: jax.Array, share: float) -> jax.Array:
  """A share of the images sampled at a coarser side s (anti-aliased) and resampled back
  bilinearly, as a small scan is by the reader."""
  num, height, width = images.shape[:3]
  pick_key, side_key = jax.random.split(key)
  side = jax.random.uniform(side_key, (num,), minval=MIN_SIDE, maxval=height)
  step = height / side  # Original pixels per coarse pixel.
  smooth = _blur(images, 0.5 * jnp.sqrt(jnp.maximum(step**2 - 1, 0)))

  def resample(image, step):
    grid = jnp.arange(height, dtype=jnp.float32)
    coarse = (grid + 0.5) / step - 0.5  # Each pixel's position on the coarse grid.
    low = jnp.floor(coarse)
    frac = coarse - low
    # The coarse pixels around each pixel, and where they sit on the original grid.
    near = [(low + 0.5) * step - 0.5, (low + 1.5) * step - 0.5]
    total = 0.0
    for i, rows in enumerate(near):
      for j, cols in enumerate(near):
        weight = jnp.where(i, frac, 1 - frac)[:, None] * jnp.where(j, frac, 1 - frac)[None, :]
        at = jnp.meshgrid(rows, cols, indexing='ij')
        value = jax.scipy.ndimage.map_coordinates(image, at, order=1, mode='nearest')
        total = total + weight * value
    return total

  per_channel = jax.vmap(resample, in_axes=(-1, None), out_axes=-1)
  coarse = jax.vmap(per_channel)(smooth, step)
  chosen = jax.random.bernoulli(pick_key, share, (num, 1, 1, 1))
  return jnp.where(chosen, coarse, images)


def _pen(images: jax.Array, key: jax.Array, share: float) -> jax.Array:
  """A share of the images with strokes a pixel thicker (3x3 max) or thinner (3x3 min)."""
  pick_key, way_key = jax.random.split(key)

  def window(x, op, init):
    return jax.lax.reduce_window(x, init, op, (1, 3, 3, 1), (1, 1, 1, 1), 'SAME')

  thick = window(images, jax.lax.max, -jnp.inf)
  thin = window(images, jax.lax.min, jnp.inf)
  thicker = jax.random.bernoulli(way_key, 0.5, (images.shape[0], 1, 1, 1))
  chosen = jax.random.bernoulli(pick_key, share, (images.shape[0], 1, 1, 1))
  return jnp.where(chosen, jnp.where(thicker, thick, thin), images)


def from_config(augment: ml_collections.ConfigDict) -> Distortion | None:
  """The distortion a config's augment group asks for; None when its ranges are all 0."""
  distortion = Distortion(**augment.to_dict())
  return distortion if distortion.enabled else None
