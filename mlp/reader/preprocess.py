"""Turns a user's picture of digits into model inputs made the way MNIST's were made.

MNIST took binary scans of handwritten digits, scaled each to fit a 20x20 box keeping its aspect
ratio (anti-aliasing gives the grey edges), and placed it on a 28x28 field so that its centre of
mass is the field's centre; ink is bright (255) on black (0). A user's scan, photo, drawing or
tight crop differs in everything else, so `find_ink` first recovers the ink:

1. Grayscale; transparent pixels take the colour of the background (see `_flatten_alpha`).
2. Polarity, on a thumbnail without its shading (a wide blur subtracted): of the dark and the
   light pixels (Otsu's split), the ink is the side that covers less of the image's border and
   area (weighted 2:1). The paper need not be the majority nor surround the digit: in a tight
   crop ink touches the edges and may cover about half the pixels.
3. Lighting: images up to FLAT_SIDE are taken as evenly lit. Larger ones: a grey closing just
   wider than the strokes marks the ink roughly; the paper's shade is then averaged locally over
   the other pixels, which removes a tint, a haze, a gradient, vignetting or a soft shadow.
4. Otsu's threshold of the ink's contrast (never below the noise or a minimal contrast) marks the
   ink; mlp/reader/segment.py drops ruled lines, specks and bits of neighbours and finds the digits.
   No ink is an error rather than a guess.
5. Per digit: crop to its ink, binarize at 4x the box's resolution, thicken pen strokes much
   thinner than MNIST's, area-average into the 20x20 box, centre by mass (`to_model_input`).

Example:
  image = preprocess.load('house.jpg')  # EXIF orientation applied.
  digits = preprocess.read_digits(image)  # Left to right: pixels uint8 (28, 28, 1) and box.
  slots = preprocess.read_slots(image)  # The same, with the other ways to read compact ink.
"""

import dataclasses
import io
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps
from scipy import ndimage

from input_pipeline.errors import UserError
from mlp.reader import segment

FIELD = 28  # MNIST's canvas.
BOX = 20  # The digit is scaled so that its longer side is this long.
CENTRE = 14.0  # Mean centre of mass of MNIST digits, (row, column) in pixel indices.
WORKING_SIDE = 512  # Larger images are shrunk to this first: ample for a 20x20 result.
THUMBNAIL_SIDE = 128  # Polarity and lighting are judged at this size.
HIGH_PASS = 0.2  # Polarity is judged on detail finer than this share of the side.
FLAT_SIDE = 64  # Images no larger are taken as evenly lit.
WINDOWS = (0.06, 0.12, 0.24, 0.4)  # Closing windows tried, as shares of the longer side ...
PLATEAU = 1.15  # ... until a wider one finds at most this much more ink.
COARSE = 10  # Digits at most this many pixels tall are read from their greys, unbinarized.
ANALYSIS = 4  # The ink is binarized at ANALYSIS times the box's resolution, then averaged.
MIN_CONTRAST = 24  # Ink must differ from the background by this much (of 255)...
NOISE_SIGMAS = 5  # ... and by this many standard deviations of the background noise.
LEVELS = np.arange(256.0)
MAX_PIXELS = 100_000_000  # Larger images are refused before decoding (memory, time).
# Stroke width / longer side of the digit, as measured by `_stroke_ratio` on MNIST's test digits:
# 1st percentile and median. Strokes thinner than the first are thickened to the second.
THIN_STROKE = 0.065
MNIST_STROKE = 0.107


@dataclasses.dataclass(frozen=True)
class Digit:
  """One digit found in an image: the model's input and where it is (x0, y0, x1, y1 exclusive)."""

  pixels: np.ndarray  # uint8 (28, 28, 1), ink 255 on 0.
  box: tuple[int, int, int, int]  # In the image's pixels, after EXIF orientation.


Slot = list[list[Digit]]  # The ways to read some ink (segment.readings), the likelier first.


def readable_suffixes() -> frozenset[str]:
  """File name endings of the formats Pillow can open here ('.png', '.jpg', ...)."""
  Image.init()
  return frozenset(
    suffix for suffix, kind in Image.registered_extensions().items() if kind in Image.OPEN
  )


def load(path: str | Path, mode: str = 'L') -> Image.Image:
  """Decodes an image file, upright as its EXIF orientation says; UserError if it cannot.

  Only regular files are opened (a FIFO would block). info['scale'] is the file's pixels per
  decoded pixel: JPEGs are decoded at a reduced size, in mode ('L' or 'RGB'), when that suffices.
  """
  path = Path(path)
  try:
    mode = path.stat().st_mode
  except FileNotFoundError:
    kind = 'broken link: its target does not exist' if path.is_symlink() else None
    raise UserError(kind or 'no such file or directory') from None
  except OSError as error:
    raise UserError(f'cannot read: {error.strerror or error}') from None
  if stat.S_ISDIR(mode):
    raise UserError('a directory without image files')
  if not stat.S_ISREG(mode):
    raise UserError('not a regular file (a FIFO, socket or device): give an image file')
  if path.stat().st_size == 0:
    raise UserError('empty file')
  try:
    with open(path, 'rb') as file:
      return decode(file, mode)
  except OSError as error:
    raise UserError(f'cannot read: {error.strerror or error}') from None
  except UserError as error:
    if str(error).startswith('not an image') and path.suffix.lower() not in readable_suffixes():
      raise UserError(f'unsupported format {path.suffix}: convert it to PNG or JPEG') from None
    raise


def prepare_file(
  path: Path,
  save_as: Path | None = None,
  fit_to: tuple[int, ...] | None = None,
  search: bool = False,
) -> list[Slot] | str:
  """The slots of an image file (`read_slots`), or why there are none; runs in worker processes.

  save_as, if given, is a path without suffix under which the 28x28 inputs are saved (and, for
  several digits, '<save_as>-boxes.png', the image with the digits' boxes drawn). fit_to, the
  image shape of a dataset other than digits, prepares the whole picture with `fit` instead.
  """
  try:
    image = load(path, 'L' if fit_to is None else 'RGB')
    slots = read_slots(image, search) if fit_to is None else [[fit(image, fit_to)]]
    if save_as is not None:
      save_inputs(image, [digit for slot in slots for digit in slot[0]], save_as)
    return slots
  except UserError as error:
    return str(error)
  except Exception as error:  # A bug on one odd image must not stop a batch of thousands.
    return f'cannot prepare this image ({type(error).__name__}: {error}); please report it'


def save_inputs(image: Image.Image, digits: list[Digit], save_as: Path) -> None:
  """Writes what the model reads: <save_as>.png, or <save_as>-<k>.png and the boxes drawn."""
  try:
    if len(digits) == 1:
      _picture(digits[0].pixels).save(save_as.with_name(save_as.name + '.png'))
      return
    for k, digit in enumerate(digits):
      _picture(digit.pixels).save(save_as.with_name(f'{save_as.name}-{k}.png'))
    boxes = image.convert('RGB')
    scale = image.info.get('scale', 1.0)
    draw = ImageDraw.Draw(boxes)
    width = max(1, round(max(boxes.size) / 200))
    for digit in digits:
      x0, y0, x1, y1 = (v / scale for v in digit.box)
      draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=(255, 0, 0), width=width)
    boxes.save(save_as.with_name(save_as.name + '-boxes.png'))
  except OSError as error:
    raise UserError(f'cannot save the preprocessed image in {save_as.parent}: {error}') from None


def _picture(pixels: np.ndarray) -> Image.Image:
  return Image.fromarray(pixels[:, :, 0] if pixels.shape[-1] == 1 else pixels)


def load_bytes(data: bytes, mode: str = 'L') -> Image.Image:
  """`load` for an image file's contents held in memory (an upload)."""
  if not data:
    raise UserError('empty file')
  return decode(io.BytesIO(data), mode)


def fit(image: Image.Image, shape: tuple[int, ...]) -> list[Digit]:
  """For datasets other than digits, the whole picture as one input: its centre cropped to the
  dataset's aspect ratio and resized to its shape (H, W, C), in grey or colour as it has."""
  height, width, channels = shape
  converted = image.convert('L' if channels == 1 else 'RGB')
  fitted = ImageOps.fit(converted, (width, height), Image.Resampling.BICUBIC)
  scale = image.info.get('scale', 1.0)
  box = (0, 0, round(image.width * scale), round(image.height * scale))
  return [Digit(np.asarray(fitted, np.uint8).reshape(shape), box)]


def decode(file, mode: str = 'L') -> Image.Image:
  """Decodes an open binary image file, upright; UserError if not an image or too large."""
  too_large = f'image too large: over the limit of {MAX_PIXELS:,} pixels; scale it down'
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', Image.DecompressionBombWarning)
      with Image.open(file) as image:
        width, height = image.size
        if width * height > MAX_PIXELS:
          raise UserError(f'{too_large} ({width}x{height})')
        image.draft(mode, (WORKING_SIDE, WORKING_SIDE))  # JPEG decodes at 1/2..1/8 size: faster.
        upright = ImageOps.exif_transpose(image)  # A decoded copy: reading errors surface here.
  except Image.DecompressionBombError:
    raise UserError(too_large) from None
  except Image.UnidentifiedImageError:
    raise UserError('not an image Pillow can read (PNG, JPEG, BMP, GIF, TIFF, ...)') from None
  except (OSError, SyntaxError, ValueError, EOFError) as error:
    raise UserError(f'damaged or truncated image ({error})') from None
  upright.info['scale'] = width / image.size[0]
  return upright


def read_slots(image: Image.Image, search: bool = False) -> list[Slot]:
  """The model inputs of a picture's digits: its slots left to right, each with its readings
  (search: segment.readings's, for a model trained to refuse pieces of digits).

  Raises:
    UserError: the image holds no ink (blank, or too faint to tell from its noise), or only
      ink that is no digit (ruled lines, specks, a dot, a line, a page of marks).
  """
  ink, threshold, scale = find_ink(image)
  scale *= image.info.get('scale', 1.0)
  return [
    [[_digit(part, ink, threshold, scale) for part in reading] for reading in slot]
    for slot in segment.readings(ink > threshold, search)
  ]


def read_digits(image: Image.Image) -> list[Digit]:
  """The digits of a picture, left to right, each slot read its likelier way without a model."""
  return [digit for slot in read_slots(image) for digit in slot[0]]


def _digit(part: segment.Part, ink: np.ndarray, threshold: float, scale: float) -> Digit:
  """The model input of one part of the ink mask, and its box in the image's pixels."""
  rows, cols = part.slices
  # The digit's ink and its anti-aliased rim, without a neighbour's strokes.
  keep = ndimage.binary_dilation(part.mask, iterations=2)
  digit_ink = np.where(keep, ink[rows, cols], 0).astype(np.uint8)
  box = tuple(round(v * scale) for v in (cols.start, rows.start, cols.stop, rows.stop))
  return Digit(to_model_input(digit_ink, threshold), box)


def to_mnist(image: Image.Image) -> np.ndarray:
  """The MNIST-style input for a picture of one digit (all its ink as one): uint8 (28, 28, 1).

  Raises:
    UserError: the image holds no ink.
  """
  ink, threshold, _ = find_ink(image)
  mask = segment.clean(ink > threshold)
  if not mask.any():
    raise UserError(segment.NO_DIGIT)
  rows, cols = np.nonzero(mask)
  crop = np.where(mask, ink, 0)[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
  return to_model_input(crop.astype(np.uint8), threshold)


def to_model_input(ink: np.ndarray, threshold: float) -> np.ndarray:
  """MNIST's preparation of one digit's ink (uint8, ink bright, cropped): uint8 (28, 28, 1)."""
  rows, cols = np.nonzero(ink > threshold)
  crop = Image.fromarray(ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1])
  if max(crop.size) <= COARSE:  # A coarse scan: its greys say more than a binarized outline.
    return _centre(_from_greys(crop))
  strokes = _binarize(crop, threshold, ANALYSIS * BOX)
  return _centre(_fit_box(_thicken(strokes)))


def find_ink(image: Image.Image) -> tuple[np.ndarray, float, float]:
  """The ink's contrast (uint8 (H, W), ink bright), the level that marks ink, and the scale.

  The contrast is at the working size (longer side at most WORKING_SIDE); scale is the image's
  pixels per working pixel.

  Raises:
    UserError: no ink (blank, or too faint to tell from its noise).
  """
  gray = _grayscale(image)
  scale = max(image.size) / max(gray.shape[::-1])
  small = _resize_array(gray, THUMBNAIL_SIDE) if max(gray.shape) > THUMBNAIL_SIDE else gray
  dark, rough = _polarity(small)
  shaded = gray if dark else 255 - gray
  if max(gray.shape) <= FLAT_SIDE:  # A crop this small is evenly lit: one shade of paper.
    # The paper side's lighter half: at this size its darker half is mostly the ink's grey rim.
    paper = shaded[~rough] if not rough.all() else shaded.max(keepdims=True)
    paper = paper[paper >= np.median(paper)]
    level = float(np.median(paper))
    ink = np.clip(level - shaded, 0, 255)
    noise = max(1.4826 * float(np.median(np.abs(paper - level))), 1.0)
  else:
    paper = _paper(small if dark else 255 - small)
    paper = _upsize(paper, gray.shape) if paper.shape != gray.shape else paper
    ink = np.clip(paper - shaded, 0, 255)
    noise = _noise(ink)
  radius = max(gray.shape) / 300
  if radius >= 0.5:  # Averages the noise out of the mask; moot for small images.
    ink = np.asarray(Image.fromarray(ink.astype(np.uint8)).filter(ImageFilter.GaussianBlur(radius)))
    noise = _noise(ink)
  ink = ink.astype(np.uint8)
  threshold = max(_otsu(ink), NOISE_SIGMAS * noise, MIN_CONTRAST)
  if not (ink > threshold).any():
    raise UserError('no ink found: the image looks blank')
  return ink, threshold, scale


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


def _rough_ink(shaded: np.ndarray) -> tuple[np.ndarray, float]:
  """Where dark features lie beneath a grey closing of the paper, by how much; and its window.

  The window must be wider than the strokes, and no wider than that lest a shadow's edge pass
  for ink: the smallest of WINDOWS (shares of the longer side) past which more ink is hardly
  found.
  """
  side = max(shaded.shape)
  found = []
  for window in sorted({max(3, round(share * side)) for share in WINDOWS}):
    rough = ndimage.grey_closing(shaded, size=window, mode='nearest') - shaded
    found.append((rough, window))
    if len(found) > 1 and rough.sum() <= PLATEAU * found[-2][0].sum():
      return found[-2]
  return found[-1]


def _polarity(gray: np.ndarray) -> tuple[bool, np.ndarray]:
  """Whether the ink is darker than the paper, and roughly where it is (module docstring, 2)."""
  sigma = HIGH_PASS * max(gray.shape)
  detail = np.clip(gray - ndimage.gaussian_filter(gray, sigma, mode='nearest') + 128, 0, 255)
  detail = detail.astype(np.uint8)
  dark = detail < _otsu(detail)
  border = np.concatenate([dark[0], dark[-1], dark[1:-1, 0], dark[1:-1, -1]])
  if border.mean() + 0.5 * dark.mean() <= 0.75:  # The ink has less of both.
    return True, dark
  return False, ~dark


def _paper(shaded: np.ndarray) -> np.ndarray:
  """The paper's shade under dark ink: the local mean of the pixels that are not ink."""
  rough, window = _rough_ink(shaded)
  level = max(_otsu(np.clip(rough, 0, 255).astype(np.uint8)), MIN_CONTRAST) / 2
  paper = ~ndimage.binary_dilation(rough > level)
  if not paper.any():
    return np.full_like(shaded, shaded.max())
  sigma = window / 2
  fallback = float(np.median(shaded[paper]))
  weight = ndimage.gaussian_filter(paper.astype(np.float32), sigma, mode='nearest') + 1e-3
  total = ndimage.gaussian_filter(np.where(paper, shaded, 0), sigma, mode='nearest')
  return (total + 1e-3 * fallback) / weight


def _noise(ink: np.ndarray) -> float:
  """The noise's standard deviation, from differences of neighbours (which strokes barely move).

  At least one grey level, so that flat drawings have a usable scale; from at most 2^14 pairs.
  """
  step = max(1, ink.size >> 14)
  differences = np.diff(ink.astype(np.float32), axis=1).ravel()[::step]
  return max(1.4826 * float(np.median(np.abs(differences))) / np.sqrt(2), 1.0)


def _otsu(ink: np.ndarray) -> float:
  """Otsu's threshold of a uint8 image: the level that best splits it into two classes."""
  counts = np.bincount(ink.ravel(), minlength=256).astype(np.float64)
  below = np.cumsum(counts)
  mass = np.cumsum(counts * LEVELS)
  product = below * (below[-1] - below)
  between = np.divide(
    (mass[-1] * below - mass * below[-1]) ** 2, product, out=np.zeros(256), where=product > 0
  )
  return float(np.argmax(between))


def _from_greys(crop: Image.Image) -> np.ndarray:
  """A coarse scan's digit upsampled smoothly into the 20x20 box, its darkest ink at 255."""
  resized = np.asarray(_resize(crop, BOX, Image.Resampling.BICUBIC), np.float32)
  return resized * (255 / max(float(resized.max()), 1.0))


def _binarize(crop: Image.Image, threshold: float, side: int) -> np.ndarray:
  """The ink as a bool mask whose longer side is `side` (the crop is resampled smoothly first)."""
  return np.asarray(_resize(crop, side, Image.Resampling.BICUBIC)) > threshold


def _stroke_ratio(strokes: np.ndarray) -> float:
  """Mean stroke width (twice the area over the perimeter) over the mask's longer side."""
  return segment.stroke_width(strokes) / max(strokes.shape)


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


def _resize_array(values: np.ndarray, side: int) -> np.ndarray:
  """A float image area-averaged so that its longer side is `side`."""
  return np.asarray(_resize(Image.fromarray(values), side, Image.Resampling.BOX), np.float32)


def _upsize(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """A smooth float image interpolated to (height, width) `shape`."""
  resized = Image.fromarray(values).resize(shape[::-1], Image.Resampling.BILINEAR)
  return np.asarray(resized, np.float32)


def _centre(digit: np.ndarray) -> np.ndarray:
  """Places the digit on the 28x28 field with its centre of mass at MNIST's: uint8 (28, 28, 1)."""
  rows, cols = np.indices(digit.shape)
  mass = digit.sum()
  top = round(CENTRE - (rows * digit).sum() / mass)
  left = round(CENTRE - (cols * digit).sum() / mass)
  field = Image.new('L', (FIELD, FIELD))
  field.paste(Image.fromarray(np.round(digit).astype(np.uint8)), (left, top))  # Clips.
  return np.asarray(field)[:, :, None]
