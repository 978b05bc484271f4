"""Which of an image's ink is digits, and which digit each stroke belongs to (left to right).

Works on the ink mask that mlp/preprocess.py finds. `clean` drops what is not a digit: ruled or
squared paper's lines and box lines (long straight runs much thinner than the strokes), specks
(tiny beside the largest stroke) and bits of a neighbouring digit cut by the crop (touching an
edge that the digit leaves free). `digits` then groups the strokes that share columns into one
digit (a broken 5 or 4 stays whole) and cuts groups far wider than a digit at their thinnest
columns (touching digits), so a house number or a year reads as several digits.
"""

import dataclasses

import numpy as np
from scipy import ndimage

from mlp.errors import UserError

NO_DIGIT = 'no digit found: the image holds only lines or specks, no digit-like ink'
LINE_LENGTH = 0.6  # A line runs over at least this share of the image's width (or height)...
LINE_THICKNESS = 0.5  # ... and is thinner than this share of the strokes' width.
SPECK = 0.05  # Components smaller than this share of the largest one are specks.
NEIGHBOUR = 0.5  # A cut-off bit of a neighbour is smaller than this share of the largest.
SHARED_COLUMNS = 0.4  # Strokes sharing this share of the narrower one's columns are one digit.
STRAY = 0.15  # Groups smaller than this share of the largest join their nearest neighbour.
WIDE = 1.5  # A group wider than this times its height holds several digits...
DIGIT_WIDTH = 0.8  # ... each about this times the height wide.
EIGHT = np.ones((3, 3), bool)  # 8-connectivity: diagonal pen strokes stay one component.


@dataclasses.dataclass(frozen=True)
class Part:
  """One digit: its bounding box in the mask, as slices, and its ink within that box."""

  slices: tuple[slice, slice]  # Rows, columns.
  mask: np.ndarray  # bool, the box's shape.


def stroke_width(mask: np.ndarray) -> float:
  """Mean stroke width in pixels: twice the area over the perimeter."""
  padded = np.pad(mask, 1)
  perimeter = np.sum(padded[1:] != padded[:-1]) + np.sum(padded[:, 1:] != padded[:, :-1])
  return 2 * mask.sum() / max(perimeter, 1)


def clean(mask: np.ndarray) -> np.ndarray:
  """The ink mask without lines, specks and bits of neighbours (see the module docstring)."""
  mask = _without_lines(mask)
  labels, count = ndimage.label(mask, EIGHT)
  if count <= 1:
    return mask
  areas = np.bincount(labels.ravel())[1:]
  boxes = ndimage.find_objects(labels)
  largest = int(np.argmax(areas))
  keep = areas >= SPECK * areas[largest]
  for index, box in enumerate(boxes):
    if keep[index] and index != largest and areas[index] < NEIGHBOUR * areas[largest]:
      keep[index] = not _cut_neighbour(box, boxes[largest], mask.shape)
  return keep[labels - 1] & mask


def digits(mask: np.ndarray) -> list[Part]:
  """The digits of an ink mask, left to right; UserError if it holds none."""
  mask = clean(mask)
  labels, count = ndimage.label(mask, EIGHT)
  if count == 0:
    raise UserError(NO_DIGIT)
  boxes = ndimage.find_objects(labels)
  groups = _groups(boxes, np.bincount(labels.ravel())[1:])
  parts = []
  for members in groups:
    rows, cols = _union(boxes[i] for i in members)
    ink = np.isin(labels[rows, cols], [i + 1 for i in members])
    parts.extend(_split(ink, rows, cols))
  return sorted(parts, key=lambda part: part.slices[1].start)


def _without_lines(mask: np.ndarray) -> np.ndarray:
  """Removes long straight runs much thinner than the rest of the ink."""
  along = {axis: _run_lengths(mask, axis) for axis in (0, 1)}
  height, width = mask.shape
  vertical = along[0] >= LINE_LENGTH * height
  horizontal = along[1] >= LINE_LENGTH * width
  rest = mask & ~vertical & ~horizontal
  if rest.sum() >= 0.05 * mask.sum():
    limit = LINE_THICKNESS * stroke_width(rest)
  else:  # Nothing but long runs: lines only if thin for the image (a tight 1 is not).
    limit = 0.04 * min(height, width)
  lines = (horizontal & (along[0] <= limit)) | (vertical & (along[1] <= limit))
  return mask & ~lines


def _run_lengths(mask: np.ndarray, axis: int) -> np.ndarray:
  """For each pixel, the length of the run of ink through it along an axis (0: vertical)."""
  structure = np.zeros((3, 3), bool)
  structure[1, :] = axis == 1
  structure[:, 1] = axis == 0
  structure[1, 1] = True
  labels, _ = ndimage.label(mask, structure)
  lengths = np.bincount(labels.ravel())
  lengths[0] = 0
  return lengths[labels]


def _cut_neighbour(box: tuple[slice, slice], main: tuple[slice, slice], shape) -> bool:
  """Whether a component is a bit of a neighbour or a box line that the crop cut.

  It touches an edge that the main digit leaves free and lies wholly beyond the digit, across
  that edge's direction (a 5's detached bar shares the digit's columns, so it stays).
  """
  for axis in (0, 1):
    beyond = box[1 - axis].stop <= main[1 - axis].start or box[1 - axis].start >= main[1 - axis].stop
    low = box[1 - axis].start == 0 and main[1 - axis].start > 0
    high = box[1 - axis].stop == shape[1 - axis] and main[1 - axis].stop < shape[1 - axis]
    if beyond and (low or high):
      return True
  return False


def _groups(boxes: list[tuple[slice, slice]], areas: np.ndarray) -> list[list[int]]:
  """Components sharing columns grouped into digits; strays joined to their nearest group."""
  order = sorted(range(len(boxes)), key=lambda i: boxes[i][1].start)
  groups: list[list[int]] = []
  for i in order:
    cols = boxes[i][1]
    for group in groups:
      span = _union(boxes[j] for j in group)[1]
      shared = min(span.stop, cols.stop) - max(span.start, cols.start)
      narrower = min(span.stop - span.start, cols.stop - cols.start)
      if shared >= SHARED_COLUMNS * narrower:
        group.append(i)
        break
    else:
      groups.append([i])
  mass = [areas[group].sum() for group in groups]
  strays = [g for g, m in enumerate(mass) if m < STRAY * max(mass)]
  if len(strays) == len(groups):
    return groups
  for g in strays:
    centre = _centre(_union(boxes[i] for i in groups[g]))
    others = [h for h in range(len(groups)) if h not in strays]
    nearest = min(others, key=lambda h: abs(_centre(_union(boxes[i] for i in groups[h])) - centre))
    groups[nearest].extend(groups[g])
  return [group for g, group in enumerate(groups) if g not in strays]


def _centre(box: tuple[slice, slice]) -> float:
  return (box[1].start + box[1].stop) / 2


def _union(boxes) -> tuple[slice, slice]:
  boxes = list(boxes)
  return tuple(
    slice(min(b[axis].start for b in boxes), max(b[axis].stop for b in boxes)) for axis in (0, 1)
  )


def _split(ink: np.ndarray, rows: slice, cols: slice) -> list[Part]:
  """A group cut into digits at its thinnest columns when it is far wider than tall."""
  height, width = ink.shape
  if width <= WIDE * height:
    return [Part((rows, cols), ink)]
  count = max(2, round(width / (DIGIT_WIDTH * height)))
  columns = ink.sum(axis=0)
  step = width / count
  cuts = [0]
  for i in range(1, count):
    low = round((i - 0.35) * step)
    high = max(round((i + 0.35) * step), low + 1)
    cuts.append(low + int(np.argmin(columns[low:high])))
  cuts.append(width)
  parts = []
  for start, stop in zip(cuts[:-1], cuts[1:], strict=True):
    piece = ink[:, start:stop]
    filled = np.nonzero(piece.any(axis=1))[0]
    if filled.size == 0:
      continue
    top, bottom = filled[0], filled[-1] + 1
    box = (slice(rows.start + top, rows.start + bottom), slice(cols.start + start, cols.start + stop))
    parts.append(Part(box, piece[top:bottom]))
  return parts
