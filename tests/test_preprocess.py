"""Preprocessing drawn pictures of a 7, as scans, photos and paint programs save them."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from input_pipeline.errors import UserError
from mlp.reader import preprocess

pytestmark = pytest.mark.unit

SIZE = (280, 280)
BOX = (60, 40, 200, 240)  # Left, top, right, bottom of the 7: 140x200, MNIST's 14x20 scaled.


def seven(size=SIZE, box=BOX, ink=255, paper=0, mode='L', width=None) -> Image.Image:
  """A 7 with a crossbar; strokes a ninth of its height unless `width` says otherwise."""
  image = Image.new(mode, size, paper)
  left, top, right, bottom = box
  across = right - left
  middle = (top + bottom) / 2
  width = width or round((bottom - top) / 9)
  draw = ImageDraw.Draw(image)
  draw.line([(left, top), (right, top), (left + 0.35 * across, bottom)], ink, width, 'curve')
  draw.line([(left + 0.3 * across, middle), (left + 0.85 * across, middle)], ink, width)
  return image


def scaled_box(factor: float, left: int, top: int) -> tuple[int, int, int, int]:
  return (left, top, left + round(140 * factor), top + round(200 * factor))


def with_lighting(ink_mask: np.ndarray, light: np.ndarray, ink_share: float, noise: float, seed=0):
  """A grey photo: ink absorbs `ink_share` of the light falling on the paper, plus sensor noise."""
  pixels = light * (1 - ink_share * ink_mask)
  pixels += np.random.default_rng(seed).normal(0, noise, pixels.shape)
  return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def noisy_background():
  ink = np.asarray(seven((400, 400), scaled_box(1.4, 100, 60)), np.float64) / 255
  return with_lighting(ink, np.full(ink.shape, 200.0), 0.7, noise=30)


def uneven_lighting():
  """Light from the left and fading to the top and bottom, as a phone photo of paper."""
  ink = np.asarray(seven((800, 600), scaled_box(1.5, 300, 150)), np.float64) / 255
  rows, cols = np.indices(ink.shape) / 600
  return with_lighting(ink, 90 + 110 * cols - 60 * (rows - 0.5) ** 2, 0.6, noise=6)


def faint_on_haze():
  """Light ink only 40 levels above a grey haze."""
  ink = np.asarray(seven((500, 400), scaled_box(1.2, 250, 120)), np.float64) / 255
  return with_lighting(1 - ink, np.full(ink.shape, 210.0), 40 / 210, noise=4)


def cut_out_paper():
  """A photo of paper, cropped to a shape: a transparent margin around opaque paper."""
  image = seven((320, 320), scaled_box(1, 80, 60), (40, 40, 40, 255), (0, 0, 0, 0), 'RGBA')
  paper = Image.new('RGBA', image.size, (0, 0, 0, 0))
  ImageDraw.Draw(paper).ellipse((10, 10, 310, 310), fill=(230, 225, 215, 255))
  return Image.alpha_composite(paper, image)


CASES = {
  'mnist_style': lambda: seven(),
  'dark_on_light': lambda: seven(ink=0, paper=255),
  'off_centre_on_large_canvas': lambda: seven((1600, 1200), scaled_box(1.5, 1150, 80), 30, 220),
  'rgb_blue_pen_on_cream': lambda: seven(ink=(20, 40, 160), paper=(245, 235, 210), mode='RGB'),
  # Paint programs: strokes on a transparent canvas whose colour channels are meaningless.
  'rgba_dark_strokes': lambda: seven(ink=(0, 0, 0, 255), paper=(0, 0, 0, 0), mode='RGBA'),
  'rgba_light_strokes': lambda: seven(ink=(255,) * 4, paper=(255, 255, 255, 0), mode='RGBA'),
  'rgba_cut_out_paper': cut_out_paper,
  'noisy_background': noisy_background,
  'uneven_lighting': uneven_lighting,
  'faint_on_haze': faint_on_haze,
  'thin_pen': lambda: seven((1000, 1000), scaled_box(3, 300, 200), ink=0, paper=255, width=3),
}


@pytest.fixture(scope='module')
def reference() -> np.ndarray:
  return preprocess.to_mnist(seven())


def overlap(a: np.ndarray, b: np.ndarray) -> float:
  """Intersection over union of the inked pixels."""
  a, b = a > 127, b > 127
  return (a & b).sum() / (a | b).sum()


def assert_like_mnist(pixels: np.ndarray) -> None:
  assert pixels.shape == (28, 28, 1) and pixels.dtype == np.uint8
  ink = pixels[:, :, 0].astype(np.float64)
  rows, cols = np.nonzero(ink)
  height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
  assert max(height, width) in (19, 20) and min(height, width) <= 20  # 19: a grey edge rounds off.
  centre = [(np.indices(ink.shape)[axis] * ink).sum() / ink.sum() for axis in (0, 1)]
  np.testing.assert_allclose(centre, [14, 14], atol=1.0)
  assert ink.max() == 255 and np.mean(ink > 0) < 0.4


@pytest.mark.parametrize('case', CASES)
def test_any_picture_of_a_digit_becomes_an_mnist_digit(case, reference):
  pixels = preprocess.to_mnist(CASES[case]())
  assert_like_mnist(pixels)
  assert overlap(pixels, reference) > (0.5 if case == 'thin_pen' else 0.8)


def test_thin_strokes_are_thickened_to_mnist_widths(reference):
  thin = preprocess.to_mnist(CASES['thin_pen']())
  assert 0.7 < (thin > 127).sum() / (reference > 127).sum() < 1.5


@pytest.mark.parametrize(
  'suffix, mode',
  [('.png', 'L'), ('.png', 'I;16'), ('.jpg', 'RGB'), ('.bmp', 'RGB'), ('.gif', 'P')]
  + [('.tiff', 'RGB'), ('.webp', 'RGB')],
)
def test_reads_common_file_formats(tmp_path, reference, suffix, mode):
  image = seven(ink=0, paper=255)
  image = Image.fromarray(np.asarray(image, np.uint16) * 257) if mode == 'I;16' else image
  path = tmp_path / f'seven{suffix}'
  image.convert(mode).save(path)
  assert overlap(preprocess.to_mnist(preprocess.load(path)), reference) > 0.9


def test_applies_exif_orientation(tmp_path, reference):
  # A phone held sideways stores the pixels rotated and says so in EXIF (6: turn right to view).
  stored = seven(ink=0, paper=255, mode='RGB').transpose(Image.Transpose.ROTATE_90)
  exif = Image.Exif()
  exif[0x0112] = 6
  stored.save(tmp_path / 'photo.jpg', exif=exif)
  assert overlap(preprocess.to_mnist(preprocess.load(tmp_path / 'photo.jpg')), reference) > 0.9
  assert overlap(preprocess.to_mnist(stored), reference) < 0.5  # Unrotated, it is no 7.


@pytest.mark.parametrize(
  'blank',
  [
    lambda: Image.new('L', SIZE, 255),
    lambda: Image.new('RGB', SIZE, (30, 30, 30)),
    lambda: with_lighting(np.zeros((300, 400)), np.full((300, 400), 128.0), 0, noise=10),
    lambda: ImageOps.expand(Image.new('L', (20, 20), 200), 4, 190),  # A faint frame is no ink.
    lambda: Image.new('RGBA', SIZE, (0, 0, 0, 0)),
  ],
  ids=['white', 'dark', 'noise', 'faint_frame', 'transparent'],
)
def test_blank_images_are_an_error(blank):
  with pytest.raises(UserError, match='no ink'):
    preprocess.to_mnist(blank())


def test_readable_suffixes_include_the_common_formats():
  assert {
    '.png',
    '.jpg',
    '.jpeg',
    '.bmp',
    '.gif',
    '.tif',
    '.tiff',
  } <= preprocess.readable_suffixes()


def png_header(width: int, height: int) -> bytes:
  """A PNG that claims a size (its pixels are missing: only the header is read)."""

  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

  header = struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0)
  return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IEND', b'')


@pytest.mark.parametrize('size', [(20000, 20000), (12000, 9000)])
def test_images_over_the_pixel_limit_are_refused_before_decoding(size):
  with pytest.raises(UserError, match='image too large: over the limit of 100,000,000 pixels'):
    preprocess.load_bytes(png_header(*size))


@pytest.mark.parametrize('side', [8, 16, 64])
@pytest.mark.parametrize('dark', [True, False], ids=['dark_ink', 'light_ink'])
def test_a_seven_cropped_tight_is_found_at_any_size(side, dark, reference):
  tight = seven(ink=0 if dark else 255, paper=255 if dark else 0).crop((49, 29, 212, 251))
  small = tight.resize((round(side * tight.width / tight.height), side), Image.Resampling.BOX)
  pixels = preprocess.to_mnist(small)
  assert_like_mnist(pixels)
  assert overlap(pixels, reference) > 0.5  # Thin at 28x28: one pixel of shift costs much.


def test_numbers_are_split_into_digits_left_to_right():
  row = Image.new('L', (700, 280), 255)
  for k in range(3):
    row.paste(seven(ink=0, paper=255).crop((40, 20, 220, 260)), (20 + 220 * k, 20))
  digits = preprocess.read_digits(row)
  assert [d.box[0] for d in digits] == sorted(d.box[0] for d in digits) and len(digits) == 3
  for digit in digits:
    assert_like_mnist(digit.pixels)


def test_ruled_lines_alone_are_no_digit():
  paper = Image.new('L', (300, 200), 240)
  draw = ImageDraw.Draw(paper)
  for y in range(20, 200, 30):
    draw.line([(0, y), (300, y)], 150, 2)
  with pytest.raises(UserError, match='no digit found'):
    preprocess.read_digits(paper)


def _pad(*strokes: list[tuple[int, int]], width: int = 22, size=SIZE) -> Image.Image:
  """Strokes drawn black on white as on the page's pad."""
  image = Image.new('L', size, 255)
  draw = ImageDraw.Draw(image)
  for points in strokes:
    draw.line(points, 0, width, 'curve')
    for x, y in (points[0], points[-1]):
      draw.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), 0)
  return image


@pytest.mark.parametrize(
  'strokes, reason',
  [
    ([[(140, 140), (141, 141)]], 'a dot'),
    ([[(40, 140), (240, 150)]], 'a line'),
    ([[(40, 170), (240, 100)]], 'a line'),  # 19 degrees: no 1 slants so.
    ([[(40, 140), (140, 150), (240, 135)]], 'a line'),
  ],
  ids=['dot', 'level_line', 'slanted_line', 'bent_line'],
)
def test_dots_and_lines_are_no_digit(strokes, reason):
  with pytest.raises(UserError, match=f'^no digit found: the ink is {reason}'):
    preprocess.read_slots(_pad(*strokes))


def test_a_page_of_marks_is_no_number():
  marks = [[(15 + 20 * k, 80), (20 + 20 * k, 120)] for k in range(14)]
  with pytest.raises(UserError, match='^no digit found: too many marks'):
    preprocess.read_slots(_pad(*marks, width=5, size=(300, 200)))


def test_an_upright_stroke_is_a_one_not_a_line():
  ((reading, *_),) = preprocess.read_slots(_pad([(140, 40), (136, 240)]))
  assert len(reading) == 1


def test_compact_ink_is_offered_as_one_digit_and_as_two():
  """Two 1s as close as a 0 is wide: the model decides (predict.choose)."""
  (slot,) = preprocess.read_slots(_pad([(115, 50), (112, 230)], [(165, 50), (162, 230)]))
  assert sorted(len(reading) for reading in slot)[:2] == [1, 2]
  two = next(reading for reading in slot if len(reading) == 2)
  assert two[0].box[0] < two[1].box[0]
  for digit in two:
    assert_like_mnist(digit.pixels)
