"""Reads the digit in a user's own images with a trained model.

Command:
  python main.py --mode=predict --workdir=runs/default-... --image=photos/ [--output=json]

Each image is prepared the way MNIST's digits were (mlp/preprocess.py) on a few threads and
classified in batches of BATCH_SIZE, the last one padded, so any number of images costs one
compilation. Results go to stdout in input order, one line per image; an image that cannot be
read is reported (stderr, and in json as {"path", "error"}) without stopping the others.
"""

import concurrent.futures
import functools
import itertools
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np
from absl import logging
from PIL import Image

from input_pipeline import DatasetInfo
from mlp import checkpoint, devices, preprocess, steps
from mlp.errors import UserError

BATCH_SIZE = 256
PROGRESS_SECONDS = 5.0


def image_paths(images: Sequence[str | Path]) -> list[Path]:
  """The given files, and every image file of each given directory sorted by name.

  A directory without image files stays in the list, so that it is reported rather than skipped.
  """
  suffixes = preprocess.readable_suffixes()
  paths = []
  for path in map(Path, images):
    found = []
    if path.is_dir():
      found = sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes and p.is_file())
    paths.extend(found or [path])
  return paths


def classifier(
  model: steps.Model, params, info: DatasetInfo, batch_size: int = BATCH_SIZE
) -> Callable[[np.ndarray], np.ndarray]:
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


def read(path: Path) -> np.ndarray | str:
  """The model input for one image file, or why there is none."""
  if path.is_dir():
    return 'a directory without image files'
  try:
    return preprocess.to_mnist(preprocess.load(path))
  except UserError as error:
    return str(error)


def record(path: Path, probabilities: np.ndarray) -> dict:
  """The json line of one prediction (6 significant digits are plenty for probabilities)."""
  digit = int(np.argmax(probabilities))
  rounded = [float(f'{p:.6g}') for p in probabilities]
  return dict(path=str(path), digit=digit, probability=rounded[digit], probabilities=rounded)


def run(
  workdir: str | Path, images: Sequence[str], output: str, save_preprocessed: str | None
) -> int:
  """Predicts every image and prints the results; returns 1 if any image failed, else 0."""
  if not images:
    raise UserError('--mode=predict needs --image=PATH, an image file or a directory (repeatable).')
  _, info, model, params = checkpoint.restore_for_inference(Path(workdir))
  paths = image_paths(images)
  save_dir = Path(save_preprocessed) if save_preprocessed else None
  if save_dir:
    save_dir.mkdir(parents=True, exist_ok=True)
  classify = classifier(model, params, info)
  failed = 0
  start = last_log = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor() as pool:
    inputs = pool.map(read, paths)  # In order, while the batch before is classified.
    for first in range(0, len(paths), BATCH_SIZE):
      names = paths[first : first + BATCH_SIZE]
      batch = list(zip(names, itertools.islice(inputs, len(names)), strict=True))
      pixels = [x for _, x in batch if not isinstance(x, str)]
      probabilities = iter(classify(np.stack(pixels)) if pixels else ())
      for index, (path, x) in enumerate(batch, first):
        if isinstance(x, str):
          failed += 1
          _report_error(path, x, output)
          continue
        if save_dir:
          Image.fromarray(x[:, :, 0]).save(save_dir / f'{index:05d}-{path.stem}.png')
        _report(record(path, next(probabilities)), output)
      if time.perf_counter() - last_log > PROGRESS_SECONDS:
        last_log = time.perf_counter()
        done = first + len(batch)
        logging.info('%d/%d images, %.0f images/s.', done, len(paths), done / (last_log - start))
  seconds = time.perf_counter() - start
  logging.info('%d images, %d failed, in %.1fs.', len(paths), failed, seconds)
  return 1 if failed else 0


def _report(result: dict, output: str) -> None:
  if output == 'json':
    print(json.dumps(result), flush=True)
  else:
    print(f'{result["path"]}: {result["digit"]} ({result["probability"]:.1%})', flush=True)


def _report_error(path: Path, error: str, output: str) -> None:
  logging.error('%s: %s', path, error)
  if output == 'json':
    print(json.dumps({'path': str(path), 'error': error}), flush=True)
