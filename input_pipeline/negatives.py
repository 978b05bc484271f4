"""Non-digits made on the device: what a reader is trained to refuse (mlp/core/outliers.py).

From a key and a batch of digits, `negatives` draws images of named families: line drawings
(strokes, scribbles, circles, boxes, triangles, stars, crosses, letters) rasterised from up to
SEGMENTS line segments by their distance field, and images made from the batch's own digits
(pieces of a digit, two digits touching, blank or noisy paper). They are 28x28 like a reader's
inputs: ink fitted into a 20x20 box centred in the frame. FAMILIES names each kind, so a config
trains on some and tests can hold others out. Pure JAX: it runs inside the jitted step, so the
negatives cost no input pipeline and are new at every step.
"""

import jax
import jax.numpy as jnp
import numpy as np

SIDE = 28
BOX = 20.0  # The reader fits a digit's ink into this square (MNIST's convention).
SEGMENTS = 12  # Line segments per drawing; unused ones are masked.


def _letters() -> np.ndarray:
  """Capital letters that no digit resembles, as segments in the unit square (y down)."""
  strokes = {
    'A': [(0, 1, 0.5, 0), (0.5, 0, 1, 1), (0.25, 0.55, 0.75, 0.55)],
    'E': [(0, 0, 0, 1), (0, 0, 1, 0), (0, 0.5, 0.8, 0.5), (0, 1, 1, 1)],
    'F': [(0, 0, 0, 1), (0, 0, 1, 0), (0, 0.5, 0.8, 0.5)],
    'H': [(0, 0, 0, 1), (1, 0, 1, 1), (0, 0.5, 1, 0.5)],
    'K': [(0, 0, 0, 1), (1, 0, 0, 0.55), (0.3, 0.4, 1, 1)],
    'M': [(0, 1, 0, 0), (0, 0, 0.5, 0.6), (0.5, 0.6, 1, 0), (1, 0, 1, 1)],
    'N': [(0, 1, 0, 0), (0, 0, 1, 1), (1, 1, 1, 0)],
    'T': [(0, 0, 1, 0), (0.5, 0, 0.5, 1)],
    'W': [(0, 0, 0.25, 1), (0.25, 1, 0.5, 0.4), (0.5, 0.4, 0.75, 1), (0.75, 1, 1, 0)],
    'R': [
      (0, 1, 0, 0),
      (0, 0, 0.8, 0.1),
      (0.8, 0.1, 0.8, 0.4),
      (0.8, 0.4, 0, 0.5),
      (0.2, 0.5, 1, 1),
    ],
  }
  table = np.full((len(strokes), SEGMENTS, 2, 2), np.nan, np.float32)
  for index, segments in enumerate(strokes.values()):
    table[index, : len(segments)] = np.array(segments, np.float32).reshape(-1, 2, 2)
  return table * 2 - 1  # In [-1, 1], unused segments NaN.


LETTERS = _letters()


def _uniform(key, shape, low, high):
  return jax.random.uniform(key, shape, minval=low, maxval=high)


def _polyline(points: jax.Array) -> jax.Array:
  """Segments (n, SEGMENTS, 2, 2) joining points (n, SEGMENTS + 1, 2) in order."""
  return jnp.stack([points[:, :-1], points[:, 1:]], axis=2)


def _only(segments: jax.Array, used: jax.Array) -> jax.Array:
  """The segments with those past each drawing's `used` count (n,) set to NaN (unused)."""
  keep = jnp.arange(SEGMENTS)[None, :] < used[:, None]
  return jnp.where(keep[:, :, None, None], segments, jnp.nan)


def _regular(key, count, corners: int, turn: int, jitter: float) -> jax.Array:
  """Closed polygons (a triangle, a box, a star with turn 2, a circle with many corners)."""
  start_key, jitter_key, aspect_key = jax.random.split(key, 3)
  start = _uniform(start_key, (count, 1), 0, 2 * np.pi)
  angles = start + 2 * np.pi * turn * jnp.arange(SEGMENTS + 1)[None, :] / corners
  radius = 1 + _uniform(jitter_key, (count, SEGMENTS + 1), -jitter, jitter)
  points = jnp.stack([jnp.cos(angles), jnp.sin(angles)], -1) * radius[..., None]
  points = points * _uniform(aspect_key, (count, 1, 2), 0.85, 1.0)  # Round: a 0 is taller.
  segments = _polyline(points)
  return segments if corners >= SEGMENTS else _only(segments, jnp.full((count,), corners))


def _circle(key, count):
  return _regular(key, count, SEGMENTS, 1, 0.08)


def _box(key, count):
  return _regular(key, count, 4, 1, 0.1)


def _triangle(key, count):
  return _regular(key, count, 3, 1, 0.1)


def _star(key, count):
  return _regular(key, count, 5, 2, 0.1)


def _stroke(key, count):
  """One or two straight strokes, none steeper than 50 degrees (a steep stroke is a 1)."""
  angle_key, centre_key, used_key = jax.random.split(key, 3)
  angles = _uniform(angle_key, (count, SEGMENTS), -0.28 * np.pi, 0.28 * np.pi)
  direction = jnp.stack([jnp.cos(angles), jnp.sin(angles)], -1)
  centres = _uniform(centre_key, (count, SEGMENTS, 2), -0.5, 0.5)
  segments = jnp.stack([centres - direction, centres + direction], axis=2)
  return _only(segments, jax.random.randint(used_key, (count,), 1, 3))


def _scribble(key, count):
  points_key, used_key = jax.random.split(key)
  points = _uniform(points_key, (count, SEGMENTS + 1, 2), -1, 1)
  return _only(_polyline(points), jax.random.randint(used_key, (count,), 6, SEGMENTS + 1))


def _cross(key, count):
  """An X (or a tilted +): two strokes crossing near their middles."""
  angle_key, turn_key, shift_key = jax.random.split(key, 3)
  first = _uniform(angle_key, (count,), 0.15 * np.pi, 0.35 * np.pi)
  second = first + _uniform(turn_key, (count,), 0.4 * np.pi, 0.6 * np.pi)
  angles = jnp.stack([first, second], -1)
  direction = jnp.stack([jnp.cos(angles), jnp.sin(angles)], -1)
  centres = _uniform(shift_key, (count, 2, 2), -0.15, 0.15)
  segments = jnp.stack([centres - direction, centres + direction], axis=2)
  padding = jnp.full((count, SEGMENTS - 2, 2, 2), jnp.nan)
  return jnp.concatenate([segments, padding], axis=1)


def _letter(key, count):
  """A capital letter, sheared, stretched and with its ends moved a little."""
  pick_key, shear_key, noise_key = jax.random.split(key, 3)
  segments = jnp.asarray(LETTERS)[jax.random.randint(pick_key, (count,), 0, len(LETTERS))]
  shear = _uniform(shear_key, (count, 1, 1), -0.3, 0.3)
  x, y = segments[..., 0], segments[..., 1]
  segments = jnp.stack([x + shear * y, y], -1)
  return segments + _uniform(noise_key, segments.shape, -0.08, 0.08)


def _fit(points: jax.Array, key: jax.Array) -> jax.Array:
  """Drawings' segments moved into pixel coordinates, each fitted into the BOX square."""
  flat = points.reshape(points.shape[0], -1, 2)
  low, high = jnp.nanmin(flat, axis=1), jnp.nanmax(flat, axis=1)
  scale = BOX * _uniform(key, (points.shape[0],), 0.8, 1.0) / jnp.max(high - low, axis=1)
  centre = (low + high) / 2
  pixels = (points - centre[:, None, None]) * scale[:, None, None, None]
  return pixels + (SIDE - 1) / 2


def rasterise(segments: jax.Array, widths: jax.Array) -> jax.Array:
  """Images (n, 28, 28) in [0, 1] of line segments (n, S, 2, 2) in pixels (x, y; NaN: none).

  A pixel's ink falls linearly from 1 to 0 over the pixel beyond half a stroke's width
  (widths (n,)) from the nearest segment: a distance field, anti-aliased.
  """
  rows, cols = jnp.meshgrid(jnp.arange(SIDE), jnp.arange(SIDE), indexing='ij')
  pixels = jnp.stack([cols, rows], -1).reshape(-1, 2).astype(jnp.float32)  # (P, 2) as (x, y).
  start, end = segments[:, :, None, 0], segments[:, :, None, 1]  # (n, S, 1, 2)
  along = end - start
  offset = pixels[None, None] - start
  t = jnp.clip(jnp.sum(offset * along, -1) / jnp.maximum(jnp.sum(along**2, -1), 1e-6), 0, 1)
  distance = jnp.linalg.norm(offset - t[..., None] * along, axis=-1)  # (n, S, P)
  ink = jnp.clip(widths[:, None, None] / 2 + 0.5 - distance, 0, 1)
  ink = jnp.where(jnp.isnan(ink), 0.0, ink).max(axis=1)
  return ink.reshape(-1, SIDE, SIDE)


def _fit_image(image: jax.Array, key: jax.Array) -> jax.Array:
  """An image's ink (h, w) resampled so its bounding box fills the BOX square, centred."""
  rows, cols = jnp.any(image > 0.2, axis=1), jnp.any(image > 0.2, axis=0)

  def bounds(present):
    index = jnp.arange(present.shape[0])
    low = jnp.min(jnp.where(present, index, present.shape[0]))
    high = jnp.max(jnp.where(present, index, -1))
    return jnp.minimum(low, high), jnp.maximum(low, high)

  (top, bottom), (left, right) = bounds(rows), bounds(cols)
  size = jnp.maximum(jnp.maximum(bottom - top, right - left), 1).astype(jnp.float32)
  scale = BOX * _uniform(key, (), 0.85, 1.0) / size
  grid = jnp.arange(SIDE, dtype=jnp.float32) - (SIDE - 1) / 2
  sample_rows = (top + bottom) / 2 + grid / scale
  sample_cols = (left + right) / 2 + grid / scale
  coords = jnp.meshgrid(sample_rows, sample_cols, indexing='ij')
  return jax.scipy.ndimage.map_coordinates(image, coords, order=1, mode='constant')


def _digits(images: jax.Array) -> jax.Array:
  return images[..., 0].astype(jnp.float32) / 255.0


def _piece(key, images, labels, count):
  """A part of a digit (30% to 60% of its ink's rows or columns), scaled up like a digit."""
  axis_key, size_key, start_key, fit_key = jax.random.split(key, 4)
  # A piece of a 1 is still a 1: take the next digit instead.
  digits = jnp.where((labels == 1)[:, None, None], jnp.roll(_digits(images), 1, 0), _digits(images))
  digits = digits[jnp.arange(count) % digits.shape[0]]
  by_rows = jax.random.bernoulli(axis_key, 0.5, (count,))
  index = jnp.arange(SIDE, dtype=jnp.float32)
  present = jnp.where(by_rows[:, None], digits.max(2), digits.max(1)) > 0.2  # (count, SIDE)
  low = jnp.min(jnp.where(present, index, SIDE), axis=1)
  high = jnp.max(jnp.where(present, index, 0), axis=1) + 1
  size = _uniform(size_key, (count,), 0.3, 0.6) * (high - low)
  start = low + _uniform(start_key, (count,), 0, 1) * (high - low - size)
  inside = (index >= start[:, None]) & (index < (start + size)[:, None])  # (count, SIDE)
  kept = jnp.where(by_rows[:, None, None], inside[:, :, None], inside[:, None, :]) * digits
  return jax.vmap(_fit_image)(kept, jax.random.split(fit_key, count))


def _pair(key, images, labels, count):
  """Two of the batch's digits side by side, touching or overlapping, read as one image."""
  shift_key, fit_key = jax.random.split(key)
  digits = _digits(images)
  first = digits[jnp.arange(count) % digits.shape[0]]
  second = jnp.roll(digits, 1, 0)[jnp.arange(count) % digits.shape[0]]
  canvas = jnp.concatenate([first, jnp.zeros_like(first)], axis=2)
  shifts = jax.random.randint(shift_key, (count,), SIDE - 14, SIDE - 4)
  moved = jax.vmap(lambda d, s: jnp.roll(jnp.concatenate([d, jnp.zeros_like(d)], 1), s, 1))(
    second, shifts
  )
  return jax.vmap(_fit_image)(jnp.maximum(canvas, moved), jax.random.split(fit_key, count))


def _paper(key, images, labels, count):
  """Blank paper, or paper with faint noise or a few specks of dust."""
  kind_key, level_key, noise_key = jax.random.split(key, 3)
  level = _uniform(level_key, (count, 1, 1), 0, 0.5)
  noise = jax.random.uniform(noise_key, (count, SIDE, SIDE))
  kind = jax.random.randint(kind_key, (count, 1, 1), 0, 3)
  return jnp.select([kind == 0, kind == 1], [0.0 * noise, level * noise], (noise > 0.97) * 1.0)


DRAWINGS = {
  'stroke': _stroke,
  'scribble': _scribble,
  'circle': _circle,
  'box': _box,
  'triangle': _triangle,
  'star': _star,
  'cross': _cross,
  'letter': _letter,
}
FROM_DIGITS = {'piece': _piece, 'pair': _pair, 'paper': _paper}
FAMILIES = (*DRAWINGS, *FROM_DIGITS)


def family(name: str, key: jax.Array, images: jax.Array, labels: jax.Array, count: int):
  """count images (count, 28, 28) in [0, 1] of one family."""
  if name in FROM_DIGITS:
    return FROM_DIGITS[name](key, images, labels, count)
  draw_key, fit_key, width_key = jax.random.split(key, 3)
  segments = _fit(DRAWINGS[name](draw_key, count), fit_key)
  return rasterise(segments, _uniform(width_key, (count,), 1.5, 3.5))


def negatives(
  key: jax.Array, images: jax.Array, labels: jax.Array, count: int, families: tuple[str, ...]
) -> jax.Array:
  """count non-digits (count, H, W, 1), float in [0, 255] like the images (uint8 digits
  (n, 28, 28, 1) and their labels, from which pieces and pairs are cut), split evenly over the
  named families."""
  keys = jax.random.split(key, len(families))
  each = -(-count // len(families))
  made = [family(name, k, images, labels, each) for name, k in zip(families, keys, strict=True)]
  return 255.0 * jnp.concatenate(made)[:count, :, :, None]
