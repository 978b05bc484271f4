"""Reads the digits, or the numbers, in a user's own images with a trained model.

Command:
  python main.py --mode=predict --workdir=runs/default-... --image=photos/ [--output=json]

For a digit dataset (DatasetInfo.is_digits) images are decoded and prepared the way MNIST's
digits were (mlp/reader/preprocess.py, which also splits a number into its digits); for any other
dataset each picture is centre-cropped and resized to the dataset's image shape
(preprocess.fit). Either way they are prepared in worker processes on every core given 3 or
more (see MIN_CORES), and classified in batches of BATCH_SIZE, the last one padded, so any number of
images costs one compilation. Results go to stdout in input order, one line per input: a digit,
a number, or (stderr, and in json {"path", "error"}) why there is none; one bad file never stops
the others. A reader that goes away (`| head`) ends the run quietly; a stdout that cannot take
the answers (closed, a full disk) is a one-line error and exit status 1.

For a web server, `predict_bytes(data, classify)` reads one uploaded image.
"""

import concurrent.futures
import functools
import json
import mimetypes
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
from absl import logging

from input_pipeline import DatasetInfo
from input_pipeline.errors import UserError
from mlp.core import outliers, steps
from mlp.machinery import checkpoint, devices, files
from mlp.reader import preprocess

BATCH_SIZE = 256
PROGRESS_SECONDS = 5.0
# Fewer images, or fewer cores, and images are prepared in this process: starting workers (each
# imports main.py, so JAX) costs more than they save. Measured on 2 shared cores, 3000 small
# PNGs: 365 images/s in this process, 318 on 2 threads, 175 on 2 worker processes.
MIN_PARALLEL = 64
# Rejection: a digit the model gives less than this probability is no digit (the maximum softmax
# probability baseline, Hendrycks & Gimpel 2017); chosen on the default run's validation split,
# where it refuses 0.15% of the digits, two thirds of them read wrong (docs/serving.md, "No digit
# found"). A run trained on non-digits (configs/reader.py) chose its own on validation data: see
# refusal.
MIN_CONFIDENCE = 0.4
# A reading of compact ink as k digits pays this much log-probability per digit beyond the first.
SPLIT_COST = 0.2
REFUSED_PIECE = 2.0  # ... and this much per piece too unsure to be a digit.
# A model trained to refuse reads a shape that is no digit as unsure, but its halves (a circle's
# two arcs) can look like digits: a reading of several digits needs each at this probability.
SURE_PIECE = 0.9
MIN_CORES = 3
CHUNK = 32  # Images per task sent to a worker.
SAVED_STEM = 80  # File names under --save_preprocessed keep this much of the image's name.

Classify = Callable[[np.ndarray], np.ndarray]


def image_paths(images: Sequence[str | Path]) -> list[Path]:
  """The given paths, and each given directory's image files sorted by name.

  A directory's image files are those named like an image (.png, .svg, .pdf, ...), whether
  Pillow reads them, they are broken links or they are no files at all: each gets an answer.
  A directory without any stays in the list, so that it is reported rather than skipped.
  """
  suffixes = preprocess.readable_suffixes()
  paths = []
  for path in map(Path, images):
    found = []
    if _is_dir(path):
      found = sorted(p for p in path.iterdir() if _named_like_image(p, suffixes))
    paths.extend(found or [path])
  return paths


def _is_dir(path: Path) -> bool:
  try:
    return path.is_dir()
  except OSError:  # A name too long, say: reported when it is read.
    return False


def _named_like_image(path: Path, readable: frozenset[str]) -> bool:
  suffix = path.suffix.lower()
  kind = mimetypes.guess_type(path.name)[0] or ''
  return suffix in readable or kind.startswith('image/') or kind == 'application/pdf'


def classifier(
  model: steps.Model, params, info: DatasetInfo, batch_size: int = BATCH_SIZE
) -> Classify:
  """A function from uint8 images (n, H, W, C) to probabilities (n, classes) on the host.

  It runs fixed-size padded batches, so it compiles once whatever the n of its calls, and
  splits each batch over every device (the batch is rounded to a multiple of their count).
  """
  mesh = devices.make_mesh()
  batch_size = max(batch_size // jax.device_count(), 1) * jax.device_count()
  probabilities = jax.jit(
    functools.partial(steps.probabilities, model), out_shardings=devices.replicated(mesh)
  )

  def classify(images: np.ndarray) -> np.ndarray:
    results = []
    for start in range(0, len(images), batch_size):
      batch = images[start : start + batch_size]
      padded = np.zeros((batch_size, *info.image_shape), np.uint8)
      padded[: len(batch)] = batch
      sharded = devices.put(padded, devices.batch_sharded(mesh))
      results.append(np.asarray(probabilities(params, sharded))[: len(batch)])
    return np.concatenate(results) if results else np.zeros((0, info.num_classes), np.float32)

  return classify


def load_classifier(workdir: str | Path) -> Classify:
  """The classifier of a training run's latest checkpoint (the one place that restores it)."""
  _, info, model, params = checkpoint.restore_for_inference(workdir)
  return classifier(model, params, info)


class Refusal(NamedTuple):
  """How a run refuses: below which probability, and whether it was trained on non-digits
  (then numbers are read by searching segmentations: segment.readings)."""

  threshold: float
  trained: bool = False


def digits_only() -> Refusal:
  """How a run trained on digits alone refuses (MIN_CONFIDENCE as it is when asked)."""
  return Refusal(MIN_CONFIDENCE)


def _bar(refuse: Refusal | None, digits: int) -> float:
  """The probability under which a piece of a reading of `digits` digits is penalised."""
  refuse = refuse or digits_only()
  return max(refuse.threshold, SURE_PIECE) if refuse.trained and digits > 1 else refuse.threshold


def refusal(workdir: str | Path) -> Refusal:
  """The run's Refusal: the threshold training chose on its validation digits
  (outliers.REFUSAL_FILE, written by runs trained with outliers), else MIN_CONFIDENCE."""
  path = files.path(workdir) / outliers.REFUSAL_FILE
  if not path.exists():
    return digits_only()
  try:
    value = float(json.loads(path.read_text())['min_confidence'])
  except (ValueError, KeyError, TypeError) as error:
    raise UserError(
      f'{path} is damaged ({error}); delete it to refuse at {MIN_CONFIDENCE}.'
    ) from None
  if not 0 <= value < 1:
    raise UserError(f'{path}: min_confidence={value} is not in [0, 1); delete the file.')
  return Refusal(value, True)


def fit_to(info: DatasetInfo) -> tuple[int, ...] | None:
  """preprocess.prepare_file's fit_to: None (read digits) for digit datasets, else the shape."""
  return None if info.is_digits else info.image_shape


def result(
  digits: Sequence[preprocess.Digit], probabilities: np.ndarray, info: DatasetInfo
) -> dict:
  """The json object of one image without its path (6 significant digits are plenty).

  One digit: {"digit", "probability", "probabilities"}; several, left to right:
  {"number": "2026", "digits": [{"digit", "probability", "probabilities", "box": [x0, y0, x1,
  y1]}, ...]}.
  Other datasets: {"class", "name", "probability", "probabilities"}.
  """
  rounded = [[float(f'{p:.6g}') for p in row] for row in probabilities]
  best = [int(np.argmax(row)) for row in probabilities]
  if not info.is_digits:
    name, probability = info.class_names[best[0]], rounded[0][best[0]]
    return {'class': best[0], 'name': name, 'probability': probability, 'probabilities': rounded[0]}
  if len(digits) == 1:
    return dict(digit=best[0], probability=rounded[0][best[0]], probabilities=rounded[0])
  return dict(
    number=''.join(map(str, best)),
    digits=[
      dict(digit=d, probability=row[d], probabilities=row, box=list(digit.box))
      for d, row, digit in zip(best, rounded, digits, strict=True)
    ],
  )


def size(slots: Sequence[preprocess.Slot]) -> int:
  """How many model inputs the slots hold, over all their readings."""
  return sum(len(reading) for slot in slots for reading in slot)


def choose(
  slots: Sequence[preprocess.Slot], probabilities: np.ndarray, refuse: Refusal | None = None
) -> tuple[list[preprocess.Digit], np.ndarray]:
  """Each slot read the way the model is surest of: the digits and their probabilities' rows.

  probabilities: one row per input of every reading, in order. A reading's score is the
  log-probability that all its digits are what the model reads (its best classes' product),
  less SPLIT_COST per digit beyond the first and REFUSED_PIECE per piece the model would
  refuse (below its threshold: a model trained on pieces and pairs of digits says so; for
  such a model, a piece of a reading of several digits below SURE_PIECE too); the highest
  wins (docs/serving.md, "Reading numbers").
  """
  digits, rows, first = [], [], 0
  for slot in slots:
    best = None
    for reading in slot:
      these = probabilities[first : first + len(reading)]
      first += len(reading)
      best_of = these.max(axis=1)
      score = np.log(best_of).sum() - SPLIT_COST * (len(reading) - 1)
      score -= REFUSED_PIECE * np.count_nonzero(best_of < _bar(refuse, len(reading)))
      if best is None or score > best[0]:
        best = (score, reading, these)
    digits.extend(best[1])
    rows.extend(best[2])
  return digits, np.asarray(rows)


def decide(
  slots: Sequence[preprocess.Slot],
  probabilities: np.ndarray,
  info: DatasetInfo,
  refuse: Refusal | None = None,
) -> dict:
  """`result` of the readings `choose` takes, or {"error"} if a digit is too unsure to be one
  (its probability under the run's threshold: `refusal`)."""
  refuse = refuse or digits_only()
  digits, chosen = choose(slots, probabilities, refuse)
  if info.is_digits and chosen.max(axis=1).min() < refuse.threshold:
    weakest = int(chosen.max(axis=1).argmin())
    guess, probability = int(chosen[weakest].argmax()), float(chosen[weakest].max())
    return {
      'error': f'no digit found: the ink looks like no digit the model knows (its best guess,'
      f' {guess}, has only {probability:.0%})'
    }
  return result(digits, chosen, info)


def read_bytes(
  data: bytes, classify: Classify, info: DatasetInfo, refuse: Refusal | None = None
) -> tuple[dict, list[np.ndarray]]:
  """`predict_bytes`, and the model inputs (28x28) of the digits the answer reads."""
  refuse = refuse or digits_only()
  shape = fit_to(info)
  image = preprocess.load_bytes(data, 'L' if shape is None else 'RGB')
  slots = (
    preprocess.read_slots(image, refuse.trained)
    if shape is None
    else [[preprocess.fit(image, shape)]]
  )
  probabilities = classify(np.stack([d.pixels for slot in slots for way in slot for d in way]))
  answer = decide(slots, probabilities, info, refuse)
  seen = [] if 'error' in answer else choose(slots, probabilities, refuse)[0]
  return answer, [d.pixels for d in seen]


def predict_bytes(
  data: bytes, classify: Classify, info: DatasetInfo, refuse: Refusal | None = None
) -> dict:
  """The prediction for one image file's contents, as `decide` (no path); for a web server.

  Raises:
    UserError: not an image, too large, blank or without digit-like ink; the message is one line.
  """
  return read_bytes(data, classify, info, refuse)[0]


def run(
  workdir: str | Path, images: Sequence[str], output: str, save_preprocessed: str | None
) -> int:
  """Predicts every image and prints the results; returns 1 if any image failed, else 0."""
  if not images:
    raise UserError('--mode=predict needs --image=PATH, an image file or a directory (repeatable).')
  _check_stdout()
  info = DatasetInfo.load(workdir)
  refuse = refusal(workdir)
  prepare = functools.partial(preprocess.prepare_file, fit_to=fit_to(info), search=refuse.trained)
  paths = image_paths(images)
  save_dir = Path(save_preprocessed) if save_preprocessed else None
  if save_dir:
    try:
      save_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
      raise UserError(f'--save_preprocessed={save_dir}: cannot create it ({error})') from None
  saves = [
    save_dir / f'{index:05d}-{path.stem[:SAVED_STEM]}' if save_dir else None
    for index, path in enumerate(paths)
  ]
  failed = 0
  start = last_log = time.perf_counter()
  with _preparer(len(paths)) as pool:
    prepared = pool.map(prepare, paths, saves, chunksize=CHUNK)
    try:
      classify = load_classifier(workdir)  # While the workers start.
    except UserError:
      pool.shutdown(cancel_futures=True)  # Fail now, not once every image is prepared.
      raise
    try:
      for done, batch in _batches(paths, prepared):
        failed += _predict_batch(batch, classify, info, output, refuse)
        if time.perf_counter() - last_log > PROGRESS_SECONDS:
          last_log = time.perf_counter()
          logging.info('%d/%d images, %.0f images/s.', done, len(paths), done / (last_log - start))
    except BrokenPipeError:  # The reader went away (| head): stop quietly.
      _drop_stdout()
      pool.shutdown(cancel_futures=True)
      return 1 if failed else 0
    except OSError as error:  # /dev/full, a full disk: the answers are lost, so say so.
      _drop_stdout()
      pool.shutdown(cancel_futures=True)
      raise UserError(
        f'Cannot write the answers to stdout ({error.strerror or error}); redirect it to a file '
        'on a disk with space.'
      ) from None
  seconds = time.perf_counter() - start
  logging.info(
    '%d images, %d failed, in %.1fs (%.0f images/s).',
    len(paths),
    failed,
    seconds,
    len(paths) / seconds,
  )
  return 1 if failed else 0


def _check_stdout() -> None:
  """Refuses to start when stdout is closed (`>&-`): every answer would vanish, silently."""
  closed = UserError(
    'stdout is closed, so the answers have nowhere to go; redirect it (> answers.txt).'
  )
  if sys.stdout is None:  # How Python starts when file descriptor 1 is closed.
    raise closed
  try:
    descriptor = sys.stdout.fileno()
  except (AttributeError, ValueError, OSError):
    return  # Not a file (a notebook, a test's capture): it takes the writes.
  try:
    os.fstat(descriptor)
  except OSError:
    raise closed from None


def _drop_stdout() -> None:
  """Points stdout at /dev/null, so exiting does not try (and fail) to flush it again."""
  os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


class _InProcess(concurrent.futures.Executor):
  """An executor that runs `map` lazily here: for a few images, no workers to start."""

  def map(self, fn, *iterables, chunksize=1):
    return map(fn, *iterables)


def _preparer(count: int) -> concurrent.futures.Executor:
  """Worker processes on every core for many images on 3+ cores (spawned: JAX is never forked)."""
  workers = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  if count < MIN_PARALLEL or (workers or 1) < MIN_CORES:
    return _InProcess()
  return concurrent.futures.ProcessPoolExecutor(
    workers, mp_context=multiprocessing.get_context('spawn')
  )


def _batches(
  paths: list[Path], prepared: Iterator
) -> Iterator[tuple[int, list[tuple[Path, list | str]]]]:
  """(images done, [(path, slots or error), ...]) in input order, about BATCH_SIZE inputs."""
  batch, digits, done = [], 0, 0
  for path, item in zip(paths, prepared, strict=True):
    batch.append((path, item))
    done += 1
    digits += 0 if isinstance(item, str) else size(item)
    if digits >= BATCH_SIZE:
      yield done, batch
      batch, digits = [], 0
  if batch:
    yield done, batch


def _predict_batch(
  batch: list[tuple[Path, list | str]],
  classify: Classify,
  info: DatasetInfo,
  output: str,
  refuse: Refusal,
) -> int:
  """Classifies a batch's digits at once, prints each input's line; returns how many failed."""
  pixels = [
    digit.pixels
    for _, item in batch
    if not isinstance(item, str)
    for slot in item
    for reading in slot
    for digit in reading
  ]
  probabilities = classify(np.stack(pixels)) if pixels else np.zeros((0, info.num_classes))
  failed = first = 0
  for path, item in batch:
    if not isinstance(item, str):
      count = size(item)
      item = decide(item, probabilities[first : first + count], info, refuse)
      first += count
    if isinstance(item, str) or 'error' in item:
      failed += 1
      _report_error(path, item if isinstance(item, str) else item['error'], output)
      continue
    _report(str(path), item, output)
  return failed


def _report(path: str, prediction: dict, output: str) -> None:
  if output == 'json':
    print(json.dumps({'path': path, **prediction}), flush=True)
  elif 'name' in prediction:
    print(f'{path}: {prediction["name"]} ({prediction["probability"]:.1%})', flush=True)
  elif 'number' in prediction:
    digits = ' '.join(str(d['digit']) for d in prediction['digits'])
    lowest = min(d['probability'] for d in prediction['digits'])
    print(f'{path}: {prediction["number"]} ({digits}; lowest probability {lowest:.1%})', flush=True)
  else:
    print(f'{path}: {prediction["digit"]} ({prediction["probability"]:.1%})', flush=True)


def _report_error(path: Path, error: str, output: str) -> None:
  logging.error('%s: %s', path, error)
  if output == 'json':
    print(json.dumps({'path': str(path), 'error': error}), flush=True)
