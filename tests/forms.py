"""MNIST test digits in the forms users bring them: tight crops, notebook paper, numbers.

Each form is a function (digit or digits, rng) -> PIL image; the digits are MNIST arrays
(28, 28) uint8, ink 255 on 0, so the true labels are known. Used by tests/test_forms.py.
"""

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage


def _tight(digit: np.ndarray) -> np.ndarray:
  """The digit's ink (float 0..1) cropped to its bounding box."""
  rows, cols = np.nonzero(digit > 40)
  return digit[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] / 255.0


def _scaled(ink: np.ndarray, height: int) -> np.ndarray:
  width = max(1, round(ink.shape[1] * height / ink.shape[0]))
  image = Image.fromarray((ink * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)
  return np.asarray(image) / 255.0


def _paint(ink: np.ndarray, paper: float, pen: float) -> Image.Image:
  return Image.fromarray(np.clip(paper + (pen - paper) * ink, 0, 255).astype(np.uint8))


def tight_crop(side: int, dark: bool):
  """The ink filling a side x side frame, touching its top and bottom (or both sides)."""

  def form(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    ink = _tight(digit)
    height, width = ink.shape
    square = np.zeros((max(height, width),) * 2)
    top, left = (len(square) - height) // 2, (len(square) - width) // 2
    square[top : top + height, left : left + width] = ink
    image = Image.fromarray((square * 255).astype(np.uint8)).resize((side, side), Image.BICUBIC)
    ink = np.asarray(image) / 255.0
    return _paint(ink, *((235, 25) if dark else (20, 230)))

  return form


def _page(digit: np.ndarray, rng: np.random.Generator, margin: float = 0.5):
  """The digit dark on a light page with a margin: (ink 0..1 page, digit height, its box)."""
  height = int(rng.integers(60, 160))
  ink = _scaled(_tight(digit), height)
  pad = [int(rng.integers(round(margin * height / 2), round(margin * height) + 1)) for _ in '....']
  page = np.zeros((height + pad[0] + pad[1], ink.shape[1] + pad[2] + pad[3]))
  page[pad[0] : pad[0] + height, pad[2] : pad[2] + ink.shape[1]] = ink
  return page, height


def ruled(squared: bool):
  """Notebook paper: thin light blue lines (and columns) under dark ink."""

  def form(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    page, height = _page(digit, rng)
    gap = int(height * rng.uniform(0.25, 0.4))
    offset = int(rng.integers(0, gap))
    rgb = np.empty((*page.shape, 3))
    rgb[:] = (240, 240, 232)
    width = int(rng.integers(1, 3))
    for start in range(offset, page.shape[0], gap):
      rgb[start : start + width] = (150, 180, 220)
    if squared:
      for start in range(offset, page.shape[1], gap):
        rgb[:, start : start + width] = (150, 180, 220)
    rgb += (np.array([30, 30, 60]) - rgb) * page[:, :, None]
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))

  return form


def shadowed(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
  """A phone's soft shadow over part of the page: the light falls by half across it."""
  page, _ = _page(digit, rng)
  rows, cols = np.indices(page.shape) / max(page.shape)
  angle = rng.uniform(0, 2 * np.pi)
  across = np.cos(angle) * cols + np.sin(angle) * rows
  light = 1 - 0.5 / (1 + np.exp(-(across - across.mean()) / 0.06))
  pixels = (225 - 200 * page) * light + rng.normal(0, 4, page.shape)
  return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def speckled(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
  """Dust and toner specks scattered over a scan."""
  page, height = _page(digit, rng)
  image = _paint(page, 235, 30)
  draw = ImageDraw.Draw(image)
  for _ in range(int(rng.integers(10, 40))):
    x, y = rng.uniform(0, image.width), rng.uniform(0, image.height)
    radius = rng.uniform(0.5, 0.012 * height + 1)
    draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=int(rng.integers(30, 150)))
  return image


def jpeg50(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
  """A noisy photo saved as JPEG at quality 50 (blocks and ringing around the strokes)."""
  page, _ = _page(digit, rng)
  pixels = 210 - 170 * page + rng.normal(0, 6, page.shape)
  buffer = io.BytesIO()
  Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, 'JPEG', quality=50)
  return Image.open(io.BytesIO(buffer.getvalue()))


def with_neighbour(digit: np.ndarray, rng: np.random.Generator, other: np.ndarray) -> Image.Image:
  """A crop of a row of digits: the digit, and at one edge a bit of the next one or a box line."""
  page, height = _page(digit, rng, margin=0.4)
  side = rng.choice(['left', 'right'])
  if rng.random() < 0.5:
    bit = _scaled(_tight(other), height)
    bit = bit[:, -max(2, bit.shape[1] // 4) :] if side == 'left' else bit[:, : bit.shape[1] // 4]
  else:  # A box line of the form the digit was written in.
    bit = np.ones((page.shape[0], max(2, height // 12)))
  top = (page.shape[0] - bit.shape[0]) // 2
  region = page[top : top + bit.shape[0]]
  columns = slice(0, bit.shape[1]) if side == 'left' else slice(page.shape[1] - bit.shape[1], None)
  region[:, columns] = np.maximum(region[:, columns], bit)
  return _paint(page, 230, 30)


def number(digits: list[np.ndarray], rng: np.random.Generator) -> Image.Image:
  """Digits written in a row, some spaced, some touching or overlapping a little."""
  height = int(rng.integers(50, 110))
  inks = [_scaled(_tight(d), round(height * rng.uniform(0.9, 1.0))) for d in digits]
  gaps = [round(height * rng.uniform(-0.03, 0.3)) for _ in digits[1:]]
  margin = height // 3
  width = sum(ink.shape[1] for ink in inks) + sum(gaps) + 2 * margin
  page = np.zeros((height + 2 * margin, max(width, 1)))
  left = margin
  for ink, gap in zip(inks, [*gaps, 0], strict=True):
    top = margin + int(rng.integers(0, height - ink.shape[0] + 1))
    region = page[top : top + ink.shape[0], left : left + ink.shape[1]]
    region[:] = np.maximum(region, ink[:, : region.shape[1]])
    left += max(ink.shape[1] + gap, 1)
  image = _paint(page, 225, 35)
  return image.filter(ImageFilter.GaussianBlur(0.5))


def compact_number(digits: list[np.ndarray], rng: np.random.Generator) -> Image.Image:
  """Digits written close together: touching, overlapping a little or a hair apart."""
  height = int(rng.integers(50, 110))
  inks = [_scaled(_tight(d), round(height * rng.uniform(0.9, 1.0))) for d in digits]
  gaps = [round(height * rng.uniform(-0.06, 0.04)) for _ in digits[1:]]
  margin = height // 3
  width = sum(ink.shape[1] for ink in inks) + sum(gaps) + 2 * margin
  page = np.zeros((height + 2 * margin, max(width, 1)))
  left = margin
  for ink, gap in zip(inks, [*gaps, 0], strict=True):
    top = margin + (height - ink.shape[0]) // 2
    region = page[top : top + ink.shape[0], left : left + ink.shape[1]]
    region[:] = np.maximum(region, ink[:, : region.shape[1]])
    left += max(ink.shape[1] + gap, 1)
  return _paint(page, 230, 30)


def touching_number(digits: list[np.ndarray], rng: np.random.Generator) -> Image.Image:
  """Digits whose strokes touch or overlap by up to 4 px (the issue's goal), no gaps."""
  height = int(rng.integers(50, 110))
  inks = [_scaled(_tight(d), round(height * rng.uniform(0.9, 1.0))) for d in digits]
  margin = height // 3
  page = np.zeros((height + 2 * margin, sum(ink.shape[1] for ink in inks) + 2 * margin))
  left = margin
  for ink in inks:
    top = margin + (height - ink.shape[0]) // 2
    # Touching: the columns of this digit's ink start where the last one's ended, less 0-4 px.
    region = page[top : top + ink.shape[0], left : left + ink.shape[1]]
    region[:] = np.maximum(region, ink[:, : region.shape[1]])
    left += max(ink.shape[1] - int(rng.integers(0, 5)), 1)
  return _paint(page, 230, 30)


def generated_non_digit(family: str, rng: np.random.Generator) -> Image.Image:
  """A non-digit of one of input_pipeline/negatives.py's drawn families, as a 112 px scan."""
  import jax

  from input_pipeline import negatives

  key = jax.random.key(int(rng.integers(2**31)))
  blank = np.zeros((1, 28, 28, 1), np.uint8)
  ink = np.asarray(negatives.family(family, key, blank, np.zeros(1, int), 1))[0]
  image = _paint(ink, 235, 25)
  return image.resize((112, 112), Image.BICUBIC)


def low_resolution(side: int, levels: int = 4):
  """A coarse scan: the digit's field at side x side pixels with a few grey levels, dark ink."""

  def form(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    small = Image.fromarray(digit).resize((side, side), Image.BOX)
    ink = np.round(np.asarray(small) / 255 * (levels - 1)) / (levels - 1)
    return _paint(ink, 240, 20)

  return form


def pad_drawing(height: int, brush: float):
  """A digit drawn `height` px tall on the page's 280x280 pad with a round brush `brush` wide.

  The digit's ink, binarized at that size, is its pen's path; the brush widens it.
  """

  def form(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    path = _scaled(_tight(digit), height) > 0.5
    radius = max(brush / 2 - 1, 0)
    disk = np.hypot(*np.mgrid[-radius : radius + 1, -radius : radius + 1]) <= radius + 0.5
    ink = ndimage.binary_dilation(path, disk) if radius >= 1 else path
    pad = np.zeros((280, 280))
    top = int(rng.integers(10, 270 - ink.shape[0]))
    left = int(rng.integers(10, max(11, 270 - ink.shape[1])))
    region = pad[top : top + ink.shape[0], left : left + ink.shape[1]]
    region[:] = ink[: region.shape[0], : region.shape[1]]
    return _paint(pad, 255, 0)

  return form


def pad_brush(height: float) -> float:
  """The page's brush (index.html, brushWidth) for ink `height` px tall on the 280 px pad."""
  return min(max(0.09 * height, 6), 22)


def non_digit(kind: str, rng: np.random.Generator) -> Image.Image:
  """Ink that is no digit, as drawn on the pad: a line, a dot, a scribble or a shape."""
  image = Image.new('L', (280, 280), 255)
  draw = ImageDraw.Draw(image)
  width = int(rng.integers(12, 24))
  centre = rng.uniform(100, 180, 2)
  size = rng.uniform(50, 110)
  if kind == 'line':  # Within 30 degrees of level: a steep line is a 1.
    angle = rng.uniform(-np.pi / 6, np.pi / 6)
    offset = size * 1.2 * np.array([np.cos(angle), np.sin(angle)])
    points = [tuple(centre - offset), tuple(centre + offset)]
  elif kind == 'dot':
    points = [tuple(centre), tuple(centre + rng.uniform(-3, 3, 2))]
  elif kind == 'scribble':
    points = [tuple(centre + rng.uniform(-size, size, 2)) for _ in range(int(rng.integers(8, 16)))]
  else:  # A triangle, a square or a star, closed.
    corners = {'triangle': 3, 'square': 4, 'star': 5}[kind]
    turn = 2 if kind == 'star' else 1
    start = rng.uniform(0, 2 * np.pi)
    angles = start + 2 * np.pi * turn * np.arange(corners + 1) / corners
    points = [tuple(centre + size * np.array([np.cos(a), np.sin(a)])) for a in angles]
  draw.line(points, fill=0, width=width, joint='curve')
  for x, y in (points[0], points[-1]):
    draw.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill=0)
  return image


NON_DIGITS = ('line', 'dot', 'scribble', 'triangle', 'square', 'star')
