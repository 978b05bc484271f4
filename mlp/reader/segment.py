"""Which of an image's ink is digits, and which digit each stroke belongs to (left to right).

Works on the ink mask that preprocess.py finds. `clean` drops what is not a digit: ruled or
squared paper's lines and box lines (long straight runs much thinner than the strokes), specks
(tiny beside the largest stroke) and bits of a neighbouring digit cut by the crop (touching an
edge that the digit leaves free). `readings` then refuses ink that cannot be digits (a dot, a
line, a page of marks) and says how the rest may be read: ink is grouped into digits by the
columns its strokes share (a broken 5 or 4 stays whole), and groups wider than tall are cut at
thin columns (touching digits), so a house number or a year reads as several digits. Where the
shape alone cannot tell one digit from two (a compact "11", "10" or "35" filling a square), each
way is kept as an alternative, and predict.py takes the one the model reads with more confidence.
With `search` (for a model trained to refuse pieces and pairs of digits, configs/reader.py),
touching or overlapping digits get more alternatives: cuts at the minima of the ink's column
profile (through strokes where digits touch), every way of making pieces of a digit's width
from them (`_segmentations`), so that the model's scores choose how many digits there are;
only for ink wider than one digit can be, since among so many readings of a shape that is
no digit (a circle, a box) one is too often read as digits with confidence. A
model trained on digits alone reads many pieces of digits as digits, so it gets only the few
alternatives above.
"""

import dataclasses
import itertools

import numpy as np
from scipy import ndimage

from input_pipeline.errors import UserError

NO_DIGIT = 'no digit found: the image holds only lines or specks, no digit-like ink'
DOT = 'no digit found: the ink is a dot or a short dash, not a digit'
LINE = 'no digit found: the ink is a line, far wider than it is tall'
MARKS = 'no digit found: too many marks for a number (a page of text, a chart, a screenshot?)'
LINED_SIDE = 64  # Smaller crops hold no ruled lines to remove.
LINE_LENGTH = 0.6  # A line runs over at least this share of the image's width (or height)...
LINE_THICKNESS = 0.5  # ... and is thinner than this share of the strokes' width.
SPECK = 0.05  # Components smaller than this share of the largest one are specks.
WIDER = 1.5  # A cut-off bit above or below the digit is this much wider than the digit.
SHARED_COLUMNS = 0.4  # Strokes sharing this share of the narrower one's columns are one digit.
STRAY = 0.15  # Groups smaller than this share of the largest join their nearest neighbour.
ONE_DIGIT = 1.25  # Ink at most this wide for its height may be one digit (98% of MNIST's are).
SPLIT = 1.0  # A group wider than this times its height may hold several digits: it is cut ...
VALLEY = 1.5  # ... where a column crosses at most this many strokes' widths of ink ...
WIDE = 2.0  # ... or, wider than this times its height, at its thinnest column anyway;
NARROWEST = 0.2  # No piece is narrower than this times the digits' height (a 1) ...
TALL = 0.65  # ... nor shorter than this times it.
# Ink shapes that are no digit, in stroke widths (MNIST's digits: 99.5% are over 4.9 tall).
MIN_TALL = 3.0  # Ink, or a part of a number, at most this tall and wide is a dot or a dash ...
MIN_LINE = 2.5  # ... and ink wider than tall, at most this tall, is a line.
LEVEL_LINE = 1.5  # A straight stroke is at most this many stroke widths across its axis.
MAX_DIGITS = 12  # More parts than this are no number (text, a chart's labels).
HALF = 0.3  # Cut in two, neither piece is narrower than this times the height (a box line's bit).
PAIR = 0.6  # A part of a number at least this wide for its height may be two touching digits.
CANDIDATES = 10  # Cut columns tried in one slot: the lowest minima of its column profile.
READINGS = 32  # Segmentations of one slot kept for the model to score: those cutting least ink.
EIGHT = np.ones((3, 3), bool)  # 8-connectivity: diagonal pen strokes stay one component.


@dataclasses.dataclass(frozen=True)
class Part:
  """One digit: its bounding box in the mask, as slices, and its ink within that box."""

  slices: tuple[slice, slice]  # Rows, columns.
  mask: np.ndarray  # bool, the box's shape.


def stroke_width(mask: np.ndarray) -> float:
  """Mean stroke width in pixels: twice the area over the perimeter."""
  inside = np.count_nonzero(mask[1:] != mask[:-1]) + np.count_nonzero(mask[:, 1:] != mask[:, :-1])
  edges = sum(np.count_nonzero(side) for side in (mask[0], mask[-1], mask[:, 0], mask[:, -1]))
  return 2 * np.count_nonzero(mask) / max(inside + edges, 1)


def clean(mask: np.ndarray) -> np.ndarray:
  """The ink mask without lines, specks and bits of neighbours (see the module docstring)."""
  if min(mask.shape) >= LINED_SIDE:
    mask = _without_lines(mask)
  labels, count = ndimage.label(mask, EIGHT)
  if count <= 1:
    return mask
  areas = np.bincount(labels.ravel())[1:]
  boxes = ndimage.find_objects(labels)
  # The digit: the largest component, unless that is a line from edge to edge (a box's side).
  spans = [
    len(_touches(box, mask.shape, 0)) == 2 or len(_touches(box, mask.shape, 1)) == 2
    for box in boxes
  ]
  main = boxes[int(np.argmax(areas * np.where(spans, 0.2, 1.0)))]
  keep = areas >= SPECK * areas.max()
  for index, box in enumerate(boxes):
    keep[index] &= not _cut_off(box, main, mask.shape)
  return keep[labels - 1] & mask


Reading = list[Part]  # One way to read some ink: its digits, left to right.


def readings(mask: np.ndarray, search: bool = False) -> list[list[Reading]]:
  """The ink's slots left to right, each with its possible readings, the likelier first.
  search: also every segmentation at column-profile minima (see the module docstring).

  A slot is ink that is either one digit or several; most have a single reading. Raises
  UserError for ink that is no digit: nothing, a dot, a line or a page of marks.
  """
  mask = clean(mask)
  labels, count = ndimage.label(mask, EIGHT)
  if count == 0:
    raise UserError(NO_DIGIT)
  boxes = ndimage.find_objects(labels)
  rows, cols = _union(boxes)
  height, width = rows.stop - rows.start, cols.stop - cols.start
  stroke = stroke_width(mask)
  if max(height, width) <= MIN_TALL * stroke:
    raise UserError(DOT)
  if (width > height and height <= MIN_LINE * stroke) or _level_line(mask, stroke):
    raise UserError(LINE)
  parts = [p for p in _parts(labels, boxes) if _height(p.slices) > MIN_TALL * stroke]
  if not parts:
    raise UserError(DOT)
  if len(parts) > MAX_DIGITS:
    raise UserError(MARKS)
  if width <= ONE_DIGIT * height:
    whole = Part((rows, cols), mask[rows, cols])
    if len(_touches((rows, cols), mask.shape, 1)) == 1:  # A crop that cut into a neighbour:
      return [[[whole]]]  # its bit at that edge is no digit of its own.
    return [_distinct([[whole], parts, _in_two(whole, height)])]
  tallest = max(_height(p.slices) for p in parts)
  if not search:
    return [
      _distinct([[p], _in_two(p, tallest)]) if _width(p) >= PAIR * tallest else [[p]] for p in parts
    ]
  slots = []
  for group in _group_parts(parts):
    rows, cols = _union(p.slices for p in group)
    whole = Part((rows, cols), np.isin(labels[rows, cols], _labels_of(labels, group)))
    # Each wide part in two: the geometric cuts may have left two digits in one part.
    halves = [
      q for p in group for q in (_in_two(p, tallest) if _width(p) >= PAIR * tallest else []) or [p]
    ]
    if _width(whole) > ONE_DIGIT * tallest:  # Searched only where one digit cannot be.
      slots.append(_distinct([group, [whole], halves, *_segmentations(whole, tallest)]))
    elif _width(whole) >= PAIR * tallest:
      slots.append(_distinct([group, [whole], halves, _in_two(whole, tallest)]))
    else:
      slots.append([group])
  return slots


def _group_parts(parts: Reading) -> list[Reading]:
  """Parts (left to right) in runs whose boxes touch or overlap in columns: one ink each."""
  runs: list[Reading] = []
  for part in parts:
    if runs and part.slices[1].start <= max(p.slices[1].stop for p in runs[-1]):
      runs[-1].append(part)
    else:
      runs.append([part])
  return runs


def _labels_of(labels: np.ndarray, group: Reading) -> list[int]:
  """The component labels of the ink in the parts' boxes."""
  found = set()
  for part in group:
    found |= set(np.unique(labels[part.slices][part.mask]).tolist())
  return sorted(found - {0})


def _segmentations(part: Part, height: int) -> list[Reading]:
  """The part cut into two or more pieces of a digit's width, at minima of its column profile.

  Cuts go through strokes where digits touch or overlap; the READINGS that cut the least ink
  are kept, for the model to score.
  """
  ink, (rows, cols) = part.mask, part.slices
  width = ink.shape[1]
  narrowest = max(1, round(NARROWEST * height))
  columns = ink.sum(axis=0).astype(np.float64)
  smooth = np.convolve(columns, np.ones(3) / 3, mode='same')
  minima = [
    c
    for c in range(narrowest, width - narrowest + 1)
    if smooth[c] <= smooth[c - 1] and smooth[c] <= smooth[min(c + 1, width - 1)]
  ]
  minima = sorted(sorted(minima, key=lambda c: smooth[c])[:CANDIDATES])
  found = []
  for count in range(1, min(len(minima), MAX_DIGITS - 1) + 1):
    for cuts in itertools.combinations(minima, count):
      edges = np.diff([0, *cuts, width])
      if edges.min() >= narrowest and edges.max() <= ONE_DIGIT * height:
        # Little ink cut, and pieces of like widths (a number's digits are much alike).
        cost = sum(columns[c] for c in cuts) / height + np.std(edges) / height
        found.append((cost, cuts))
  readings = []
  for _, cuts in sorted(found)[:READINGS]:
    edges = [0, *cuts, width]
    pieces = [_trimmed(ink[:, a:b], rows, cols.start + a) for a, b in itertools.pairwise(edges)]
    if all(p.mask.shape[0] >= TALL * height for p in pieces):
      readings.append(pieces)
  return readings


def digits(mask: np.ndarray) -> Reading:
  """The digits of an ink mask, left to right, each slot read its likelier way (no model)."""
  return [part for slot in readings(mask) for part in slot[0]]


def _parts(labels: np.ndarray, boxes: list[tuple[slice, slice]]) -> Reading:
  """Components grouped into digits by shared columns, wide groups cut: left to right."""
  groups = _groups(boxes, np.bincount(labels.ravel())[1:])
  height = max(_height(_union(boxes[i] for i in group)) for group in groups)
  parts = []
  for members in groups:
    rows, cols = _union(boxes[i] for i in members)
    ink = np.isin(labels[rows, cols], [i + 1 for i in members])
    parts.extend(_split(ink, rows, cols, height))
  return sorted(parts, key=lambda part: part.slices[1].start)


def _level_line(mask: np.ndarray, stroke: float) -> bool:
  """Whether the ink is one straight stroke nearer level than upright (upright, it is a 1).

  Its spread across its main axis (the ink's second moments) is about a stroke's width.
  """
  rows, cols = np.nonzero(mask)
  if rows.size < 2:
    return False
  covariance = np.cov(np.stack([rows, cols]).astype(np.float64))
  values, vectors = np.linalg.eigh(covariance)
  across = 2 * np.sqrt(max(values[0], 0.0))  # About the width of a uniform band: sqrt(12) / 2.
  level = abs(vectors[1, 1]) > abs(vectors[0, 1])  # The main axis runs more along the columns.
  return level and across <= LEVEL_LINE * stroke


def _in_two(part: Part, height: int) -> Reading:
  """The part cut at its thinnest column near the middle into two digits, or [] if none is."""
  ink, (rows, cols) = part.mask, part.slices
  width = ink.shape[1]
  margin = max(1, round(HALF * height))
  if width < 2 * margin + 1:
    return []
  columns = ink.sum(axis=0).astype(np.float64)
  distance = np.abs(np.arange(width) - width / 2) / width
  cut = margin + int(np.argmin((columns + stroke_width(ink) * distance)[margin : width - margin]))
  pieces = [
    _trimmed(ink[:, :cut], rows, cols.start),
    _trimmed(ink[:, cut:], rows, cols.start + cut),
  ]
  return pieces if all(p.mask.shape[0] >= TALL * height for p in pieces) else []


def _distinct(alternatives: list[Reading]) -> list[Reading]:
  """The non-empty readings, each once (by their boxes), in order."""
  seen, kept = set(), []
  for reading in alternatives:
    key = tuple((r.start, r.stop, c.start, c.stop) for r, c in (p.slices for p in reading))
    if reading and key not in seen:
      seen.add(key)
      kept.append(reading)
  return kept


def _width(part: Part) -> int:
  return part.slices[1].stop - part.slices[1].start


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


def _touches(box: tuple[slice, slice], shape: tuple[int, int], axis: int) -> set[int]:
  """The edges across `axis` (0: top and bottom) that a box touches: 0 low, 1 high."""
  return {
    edge
    for edge, touch in enumerate((box[axis].start == 0, box[axis].stop == shape[axis]))
    if touch
  }


def _cut_off(box: tuple[slice, slice], main: tuple[slice, slice], shape) -> bool:
  """Whether a component is a bit of a neighbour or of a box that the crop cut.

  It touches an edge that the digit leaves free and lies wholly beyond the digit in that
  direction; at the top or bottom it must also be wider than the digit (a 5's detached bar is
  not), since digits are written side by side.
  """
  for axis in (0, 1):
    free = _touches(box, shape, axis) - _touches(main, shape, axis)
    beyond = box[axis].stop <= main[axis].start or box[axis].start >= main[axis].stop
    wide = axis == 1 or (box[1].stop - box[1].start) > WIDER * (main[1].stop - main[1].start)
    if free and beyond and wide:
      return True
  return False


def _groups(boxes: list[tuple[slice, slice]], areas: np.ndarray) -> list[list[int]]:
  """Components sharing columns grouped into digits; strays joined to their nearest group.

  Strays are groups with little ink or less than half as tall as the tallest (a 5's bar).
  """
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
  heights = [_height(_union(boxes[i] for i in group)) for group in groups]
  strays = [
    g
    for g, (m, h) in enumerate(zip(mass, heights, strict=True))
    if m < STRAY * max(mass) or h < 0.5 * max(heights)
  ]
  if len(strays) == len(groups):
    return groups
  others = [g for g in range(len(groups)) if g not in strays]
  for g in strays:
    span = _union(boxes[i] for i in groups[g])[1]
    nearest = min(others, key=lambda h: _gap(span, _union(boxes[i] for i in groups[h])[1]))
    groups[nearest].extend(groups[g])
  return [group for g, group in enumerate(groups) if g not in strays]


def _height(box: tuple[slice, slice]) -> int:
  return box[0].stop - box[0].start


def _gap(a: slice, b: slice) -> int:
  """Columns between two spans (0 if they overlap)."""
  return max(a.start - b.stop, b.start - a.stop, 0)


def _union(boxes) -> tuple[slice, slice]:
  boxes = list(boxes)
  return tuple(
    slice(min(b[axis].start for b in boxes), max(b[axis].stop for b in boxes)) for axis in (0, 1)
  )


def _split(ink: np.ndarray, rows: slice, cols: slice, height: int) -> list[Part]:
  """A group cut, recursively, at its thinnest column into digits; `height`: the digits'.

  A group wider than a digit is cut where a column crosses little ink (digits touching at a
  point), if that leaves both sides nearly as tall as the digits; a group far wider
  than a digit at the thinnest column that does.
  """
  width = ink.shape[1]
  margin = max(1, round(NARROWEST * height))
  if width <= SPLIT * height or width < 2 * margin + 1:
    return [Part((rows, cols), ink)]
  columns = ink.sum(axis=0).astype(np.float64)
  distance = np.abs(np.arange(width) - width / 2) / width  # Prefers cuts near the middle.
  limit = VALLEY * stroke_width(ink) if width <= WIDE * height else np.inf
  for cut in margin + np.argsort((columns + distance)[margin : width - margin], kind='stable'):
    if columns[cut] > limit:
      break
    pieces = [
      _trimmed(ink[:, :cut], rows, cols.start),
      _trimmed(ink[:, cut:], rows, cols.start + cut),
    ]
    if all(piece.mask.shape[0] >= TALL * height for piece in pieces):
      return [part for piece in pieces for part in _split(piece.mask, *piece.slices, height)]
    if width <= WIDE * height:  # Only the thinnest column may part a digit's width.
      break
  return [Part((rows, cols), ink)]


def _trimmed(ink: np.ndarray, rows: slice, left: int) -> Part:
  """A piece of a group, its empty rows and columns cut off."""
  filled_rows = np.nonzero(ink.any(axis=1))[0]
  filled_cols = np.nonzero(ink.any(axis=0))[0]
  if filled_rows.size == 0:
    return Part((slice(rows.start, rows.start), slice(left, left)), ink[:0, :0])
  top, bottom = filled_rows[0], filled_rows[-1] + 1
  start, stop = filled_cols[0], filled_cols[-1] + 1
  box = (slice(rows.start + top, rows.start + bottom), slice(left + start, left + stop))
  return Part(box, ink[top:bottom, start:stop])
