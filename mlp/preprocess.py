"""Turns a user's picture of one digit into a model input made the way MNIST's were made.

MNIST took binary scans of handwritten digits, scaled each to fit a 20x20 box keeping its aspect
ratio (anti-aliasing gives the grey edges), and placed it on a 28x28 field so that its centre of
mass is the field's centre; ink is bright (255) on black (0). A user's scan, photo or drawing
differs in everything else, so `to_mnist` first recovers the ink:

1. Grayscale; transparent pixels take the colour of the background (see `_flatten_alpha`).
2. Lighting: a quadratic surface fitted to the non-ink pixels is subtracted, which removes a
   tint, a haze, a gradient or vignetting.
3. Polarity: the ink is the side (darker or lighter) whose deviations from that surface are
   beyond the noise; light-on-dark images are inverted.
4. A light blur and Otsu's threshold (never below the noise or a minimal contrast) mark the ink.
   No ink is an error rather than a guess.
5. Crop to the ink, binarize at 4x the box's resolution, thicken pen strokes much thinner than
   MNIST's, area-average into the 20x20 box, centre by mass.

Example:
  image = preprocess.load('seven.jpg')  # EXIF orientation applied.
  pixels = preprocess.to_mnist(image)  # uint8 (28, 28, 1), what the model reads.
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from mlp.errors import UserError

FIELD = 28  # MNIST's canvas.
BOX = 20  # The digit is scaled so that its longer side is this long.
CENTRE = 14.0  # Mean centre of mass of MNIST digits, (row, column) in pixel indices.
WORKING_SIDE = 512  # Larger images are shrunk to this first: ample for a 20x20 result.
ANALYSIS = 4  # The ink is binarized at ANALYSIS times the box's resolution, then averaged.
MIN_CONTRAST = 24  # Ink must differ from the background by this much (of 255)...
NOISE_SIGMAS = 5  # ... and by this many standard deviations of the background noise.
# Stroke width / longer side of the digit, as measured by `_stroke_ratio` on MNIST's test digits:
# 1st percentile and median. Strokes thinner than the first are thickened to the second.
THIN_STROKE = 0.065
MNIST_STROKE = 0.107


def readable_suffixes() -> frozenset[str]:
  """File name endings of the formats Pillow can open here ('.png', '.jpg', ...)."""
  Image.init()
  return frozenset(
    suffix for suffix, kind in Image.registered_extensions().items() if kind in Image.OPEN
  )


def load(path: str | Path) -> Image.Image:
  """Decodes an image file, upright as its EXIF orientation says; UserError if it cannot."""
  path = Path(path)
  if not path.exists():
    raise UserError('no such file or directory')
  if path.is_file() and path.stat().st_size == 0:
    raise UserError('empty file')
  try:
    with Image.open(path) as image:
      image.draft('L', (WORKING_SIDE, WORKING_SIDE))  # JPEG decodes at 1/2..1/8 size: faster.
      return ImageOps.exif_transpose(image)  # A decoded copy: reading errors surface here.
  except Image.UnidentifiedImageError:
    raise UserError('not an image Pillow can read (PNG, JPEG, BMP, GIF, TIFF, ...)') from None
  except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
    raise UserError(f'damaged or truncated image ({error})') from None


def to_mnist(image: Image.Image) -> np.ndarray:
  """The MNIST-style input for a picture of one digit: uint8 (28, 28, 1), ink 255 on 0.

  Raises:
    UserError: the image holds no ink (blank, or too faint to tell from its noise).
  """
  gray = _grayscale(image)
  residual = gray - _background(gray)
  noise = _robust_sigma(residual)
  dark = np.maximum(-residual - 3 * noise, 0).sum()
  light = np.maximum(residual - 3 * noise, 0).sum()
  ink = np.clip(-residual if dark > light else residual, 0, 255).astype(np.uint8)
  radius = max(gray.shape) / 300
  if radius >= 0.5:  # Averages the noise out of the mask; moot for small images.
    ink = np.asarray(Image.fromarray(ink).filter(ImageFilter.GaussianBlur(radius)))
    noise = _robust_sigma(ink)
  threshold = max(_otsu(ink), NOISE_SIGMAS * noise, MIN_CONTRAST)
  rows, cols = np.nonzero(ink > threshold)
  if rows.size == 0:
    raise UserError('no ink found: the image looks blank')
  crop = Image.fromarray(ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1])
  strokes = _binarize(crop, threshold, ANALYSIS * BOX)
  return _centre(_fit_box(_thicken(strokes)))


def _grayscale(image: Image.Image) -> np.ndarray:
  """Luminance 0..255 as float32 (H, W), alpha flattened, shrunk to at most WORKING_SIDE."""
  if image.mode in ('I', 'I;16', 'I;16B', 'I;16L', 'F'):  # 16-bit scans and the like.
    gray = np.asarray(image, np.float32)
    image = Image.fromarray(gray * (255 / 65535) if gray.max() > 255 else gray)
  elif image.mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La') or 'transparency' in image.info:
    image = image.convert('RGBA').convert('LA')
  else:
    image = image.convert('L')
  if max(image.size) > WORKING_SIDE:  # Area-averaging; with alpha, premultiplied.
    image = _resize(image, WORKING_SIDE, Image.Resampling.BOX)
  if image.mode == 'LA':
    gray, alpha = (np.asarray(channel, np.float32) for channel in image.split())
    return _flatten_alpha(gray, alpha / 255)
  return np.asarray(image, np.float32)


def _flatten_alpha(gray: np.ndarray, alpha: np.ndarray) -> np.ndarray:
  """Composites onto the background's colour, whichever that is.

  Paint programs save strokes, in any colour, on a transparent canvas: there the opaque pixels are
  the ink, and the canvas becomes the opposite of their shade (white under black ink, black under
  white ink). When most pixels are opaque they are paper and ink, and the transparent rest (a
  cut-out margin) takes the paper's shade, their median.
  """
  opaque = gray[alpha > 0.5]
  if opaque.size == 0:
    return np.full_like(gray, 255.0)  # Nothing drawn: blank.
  shade = float(np.median(opaque))
  if opaque.size < gray.size / 2:
    shade = 255.0 if shade < 128 else 0.0
  return alpha * gray + (1 - alpha) * shade


def _background(gray: np.ndarray, iterations: int = 4) -> np.ndarray:
  """The lighting: a quadratic surface fitted to the pixels that are not ink.

  Fitted on a 64x64 thumbnail by least squares to the pixels within 2.5 sigma of the previous fit
  (at first, of the median), so ink of either shade covering up to about half the image is ignored.
  """
  small = np.asarray(Image.fromarray(gray).resize((64, 64), Image.Resampling.BOX), np.float64)
  terms = np.stack([np.broadcast_to(term, small.shape).ravel() for term in _quadratic(64, 64)], 1)
  values = small.ravel()
  residual = values - np.median(values)
  for _ in range(iterations):
    keep = np.abs(residual) <= 2.5 * _robust_sigma(residual)
    coef = np.linalg.solve(terms[keep].T @ terms[keep], terms[keep].T @ values[keep])
    residual = values - terms @ coef
  surface = sum(c * term for c, term in zip(coef, _quadratic(*gray.shape), strict=True))
  return surface.astype(np.float32)


def _quadratic(height: int, width: int) -> list[np.ndarray]:
  """The terms 1, x, y, x^2, xy, y^2 of a surface over the pixels, x and y in [-1, 1]."""
  y = np.linspace(-1, 1, height)[:, None]
  x = np.linspace(-1, 1, width)[None, :]
  return [np.ones((1, 1)), x, y, x * x, x * y, y * y]


def _robust_sigma(values: np.ndarray) -> float:
  """The noise's standard deviation from the median absolute deviation, which ink barely moves.

  At least one grey level, so that flat drawings have a usable scale; from at most 2^14 pixels.
  """
  values = values.ravel()[:: max(1, values.size >> 14)].astype(np.float32)
  deviation = np.median(np.abs(values - np.median(values)))
  return max(1.4826 * float(deviation), 1.0)


def _otsu(ink: np.ndarray) -> float:
  """Otsu's threshold of a uint8 image: the level that best splits it into two classes."""
  counts = np.bincount(ink.ravel(), minlength=256).astype(np.float64)
  levels = np.arange(256)
  below = np.cumsum(counts)
  mass = np.cumsum(counts * levels)
  above = below[-1] - below
  with np.errstate(divide='ignore', invalid='ignore'):
    between = (mass[-1] * below - mass * below[-1]) ** 2 / (below * above)
  return float(np.argmax(np.nan_to_num(between)))


def _binarize(crop: Image.Image, threshold: float, side: int) -> np.ndarray:
  """The ink as a bool mask whose longer side is `side` (the crop is resampled smoothly first)."""
  return np.asarray(_resize(crop, side, Image.Resampling.BICUBIC)) > threshold


def _stroke_ratio(strokes: np.ndarray) -> float:
  """Mean stroke width (twice the area over the perimeter) over the mask's longer side."""
  padded = np.pad(strokes, 1)
  perimeter = np.sum(padded[1:] != padded[:-1]) + np.sum(padded[:, 1:] != padded[:, :-1])
  return 2 * strokes.sum() / max(perimeter, 1) / max(strokes.shape)


def _thicken(strokes: np.ndarray) -> np.ndarray:
  """Dilates pen strokes far thinner than MNIST's (a fine pen, a 1-pixel brush) to its median."""
  ratio = _stroke_ratio(strokes)
  if ratio >= THIN_STROKE:
    return strokes
  grow = round((MNIST_STROKE - ratio) * max(strokes.shape))
  size = 2 * (grow // 2) + 1
  image = Image.fromarray(np.pad(strokes, size).astype(np.uint8) * 255)
  thick = np.asarray(image.filter(ImageFilter.MaxFilter(size))) > 0
  rows, cols = np.nonzero(thick)
  return thick[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def _fit_box(strokes: np.ndarray) -> np.ndarray:
  """Area-averages the mask into the 20x20 box, aspect ratio kept: float32 0..255."""
  image = Image.fromarray(strokes.astype(np.uint8) * 255)
  return np.asarray(_resize(image, BOX, Image.Resampling.BOX), np.float32)


def _resize(image: Image.Image, side: int, resample: Image.Resampling) -> Image.Image:
  """The image scaled so that its longer side is `side`, aspect ratio kept."""
  scale = side / max(image.size)
  return image.resize(
    (max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample
  )


def _centre(digit: np.ndarray) -> np.ndarray:
  """Places the digit on the 28x28 field with its centre of mass at MNIST's: uint8 (28, 28, 1)."""
  rows, cols = np.indices(digit.shape)
  mass = digit.sum()
  top = round(CENTRE - (rows * digit).sum() / mass)
  left = round(CENTRE - (cols * digit).sum() / mass)
  field = Image.new('L', (FIELD, FIELD))
  field.paste(Image.fromarray(np.round(digit).astype(np.uint8)), (left, top))  # Clips.
  return np.asarray(field)[:, :, None]
