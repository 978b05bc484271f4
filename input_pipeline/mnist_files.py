"""MNIST from its four original files, for machines without TensorFlow (Colab's TPU runtime).

tfds needs TensorFlow to prepare MNIST (its builder reads the downloads with tf.io), not to
download it. So this module downloads the files tfds's MNIST builder names, through tfds's
download manager, which checks each against the size and SHA-256 that tfds registers for it;
decodes them with NumPy; and puts the examples in the order tfds writes them, so a run reads
the very arrays a prepared copy gives: the same validation split and the same results.
"""

import gzip
import math
import socket
import urllib.parse
import zlib
from pathlib import Path

import numpy as np
from absl import logging

from input_pipeline.errors import PREPARED_COPY, UserError

# Images, then labels, of each split, as tfds's MNIST builder names them.
FILES = {
  'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
  'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}


def urls(split: str) -> tuple[str, str]:
  """Where tfds downloads a split's images and labels from (its MNIST builder's URL)."""
  import tensorflow_datasets as tfds

  if split not in FILES:
    raise UserError(f"MNIST's original files hold the splits {sorted(FILES)}, not {split!r}.")
  base = tfds.builder_cls('mnist').URL
  return tuple(urllib.parse.urljoin(base, name) for name in FILES[split])


def _check_reachable(url: str, manual_dir: Path) -> None:
  """Fails in seconds where tfds's downloader would retry for minutes and then fail."""
  parsed = urllib.parse.urlparse(url)
  port = parsed.port or (443 if parsed.scheme == 'https' else 80)
  try:
    socket.create_connection((parsed.hostname, port), timeout=5).close()
  except OSError as error:
    raise UserError(
      f'No network to download MNIST from {parsed.hostname} ({error}); connect, put the files'
      f' {", ".join(sorted(n for pair in FILES.values() for n in pair))} in {manual_dir}, or'
      f' {PREPARED_COPY}.'
    ) from None


def fetch(split: str, download_dir: Path) -> tuple[Path, Path]:
  """The split's two files, downloaded once into download_dir and checked against tfds's sums.

  Files already in download_dir/manual are used as they are, once their checksums match.
  """
  import tensorflow_datasets as tfds

  images_url, labels_url = urls(split)
  manual_dir = Path(download_dir) / 'manual'
  manager = tfds.download.DownloadManager(
    download_dir=download_dir, manual_dir=manual_dir, force_checksums_validation=True
  )
  if not all((manual_dir / name).exists() for name in FILES[split]):
    _check_reachable(images_url, manual_dir)
  logging.info('MNIST %s: its original files, downloaded once into %s.', split, download_dir)
  try:
    return tuple(Path(path) for path in manager.download([images_url, labels_url]))
  except tfds.download.download_manager.NonMatchingChecksumError as error:
    raise UserError(
      f'A download of MNIST does not match the checksum tfds registers for it, so it is not'
      f' used: {str(error).splitlines()[0]}'
    ) from None
  except (OSError, ValueError, tfds.download.DownloadError) as error:
    message = ' '.join(str(error).split())
    raise UserError(f'Could not download MNIST into {download_dir}: {message}') from None


def read_idx(path: Path) -> np.ndarray:
  """A gzipped IDX file (LeCun's format): zero, type 8 (uint8), rank, big-endian dims, data."""
  try:
    data = gzip.decompress(Path(path).read_bytes())
  except (OSError, EOFError, zlib.error) as error:
    raise UserError(f'{path} is not gzip ({error}); delete it to download it again.') from None
  rank = data[3] if len(data) > 3 else 0
  start = 4 + 4 * rank  # Where the values begin.
  shape = tuple(map(int, np.frombuffer(data, '>u4', rank, 4))) if len(data) >= start else None
  if data[:3] != b'\0\0\x08' or shape is None or len(data) != start + math.prod(shape):
    raise UserError(f'{path} is not an IDX file of uint8 values; delete it to download it again.')
  return np.frombuffer(data, np.uint8, offset=start).reshape(shape)


def tfds_order(split: str, num_examples: int) -> np.ndarray:
  """The original indices in the order tfds writes a split: by the MD5 of split name and index.

  tfds's writer keys MNIST's examples by their index and sorts them by that hash
  (tensorflow_datasets/core/shuffle.py); its Hasher is used here so the two cannot drift apart.
  """
  from tensorflow_datasets.core import hashing

  return np.array(sorted(range(num_examples), key=hashing.Hasher(split).hash_key), np.int64)


def decode(split: str, images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
  """Images uint8 (N, 28, 28, 1) and labels int32 (N,) in tfds's order."""
  images, labels = read_idx(images_path), read_idx(labels_path)
  if images.ndim != 3 or labels.shape != images.shape[:1]:
    raise UserError(
      f'{images_path} and {labels_path} do not hold one label per image'
      f' (shapes {images.shape} and {labels.shape}).'
    )
  order = tfds_order(split, len(labels))
  return images[order, ..., np.newaxis], labels[order].astype(np.int32)


def load(split: str, download_dir: Path, download: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """A split of MNIST, 'train' or 'test', from its original files, downloaded where need be."""
  if not download:
    raise UserError(
      f'MNIST is not prepared, and downloading it into {download_dir} is off; {PREPARED_COPY}.'
    )
  return decode(split, *fetch(split, download_dir))
