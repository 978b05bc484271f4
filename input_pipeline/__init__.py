"""tfds image-classification splits as NumPy arrays: read once from tfds, cached, split, batched.

Every split is read whole into memory (MNIST is 47 MB as uint8, CIFAR-10 180 MB), so training
can put it on the device and shuffling is a full permutation. Images stay uint8 (N, H, W, C) and
labels int32 (N,); the model scales pixels to [0, 1] where it consumes them. What a run needs to
know of its dataset (image shape, class names) comes from the tfds builder's info, is cached
with the arrays and saved with the run as DatasetInfo.
"""

import dataclasses
import hashlib
import importlib.util
import json
import os
import socket
import zipfile
from pathlib import Path

import numpy as np
from absl import logging

from input_pipeline import mnist_files
from input_pipeline.errors import PREPARED_COPY, UserError
from mlp.machinery import checked, files

# Where tfds downloads MNIST from; checked before a download is tried.
DOWNLOAD_HOST = 'storage.googleapis.com'
INFO_FILE = 'dataset.json'
DIGITS = tuple('0123456789')  # The class names of MNIST and the other digit datasets.
# Part of every cache file's name: bump it when what a cache file holds changes.
CACHE_FORMAT = 2
# How a dataset's stored images are turned upright, by tfds name: EMNIST is stored transposed.
# Splits load upright, so training and predict (which reads digits as people write them) agree.
UPRIGHT = {'emnist': lambda images: images.transpose(0, 2, 1, 3)}


@dataclasses.dataclass(frozen=True)
class Split:
  """Images uint8 (N, H, W, C), labels int32 (N,) and the names of the label values."""

  images: np.ndarray
  labels: np.ndarray
  class_names: tuple[str, ...]

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What eval, predict, export and the pictures need of a run's data, without the data."""

  name: str
  image_shape: tuple[int, ...]
  class_names: tuple[str, ...]

  @classmethod
  def of(cls, name: str, split: Split) -> 'DatasetInfo':
    return cls(name, split.images.shape[1:], split.class_names)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def is_digits(self) -> bool:
    """Grey pictures of the ten digits: predict prepares users' images the way MNIST was made."""
    return self.image_shape[-1] == 1 and self.class_names == DIGITS

  def save(self, workdir: str | os.PathLike) -> None:
    """Writes dataset.json atomically: renamed into place on a disk, uploaded whole in a bucket."""
    text = json.dumps(dataclasses.asdict(self), indent=2) + '\n'
    files.write_atomic(files.path(workdir) / INFO_FILE, text)

  @classmethod
  def load(cls, workdir: str | os.PathLike) -> 'DatasetInfo':
    path = files.path(workdir) / INFO_FILE
    try:
      values = checked.read_json(path, INFO_SHAPE, 'train into a new workdir')
    except FileNotFoundError:
      raise UserError(f'{path} does not exist; train into this workdir first.') from None
    return cls(values['name'], tuple(values['image_shape']), tuple(values['class_names']))


# dataset.json: a name, the (height, width, channels) of an image, and two classes or more.
INFO_SHAPE = checked.Value(
  dict,
  fields={
    'name': checked.Value(str, min_items=1),
    'image_shape': checked.Value(
      list, items=checked.Value(int, low=1, high=1 << 16), min_items=3, max_items=3
    ),
    'class_names': checked.Value(list, items=checked.Value(str), min_items=2),
  },
)


@dataclasses.dataclass(frozen=True)
class Splits:
  name: str  # The config's data.name.
  train: Split
  validation: Split
  test: Split

  @property
  def info(self) -> DatasetInfo:
    return DatasetInfo.of(self.name, self.train)

  def __str__(self) -> str:
    info = self.info
    return (
      f'{self.name}, {len(self.train)} train, {len(self.validation)} validation, '
      f'{len(self.test)} test examples of shape {info.image_shape}, {info.num_classes} classes'
    )


def default_cache_dir() -> Path:
  base = os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache'
  return Path(base) / 'mnist-jax'


def resolve_data_dir(data_dir: str | None) -> Path:
  """The directory tfds reads: the given one, else $TFDS_DATA_DIR, else tfds's default."""
  if data_dir:
    return Path(data_dir).expanduser()
  if os.environ.get('TFDS_DATA_DIR'):
    return Path(os.environ['TFDS_DATA_DIR']).expanduser()
  return Path.home() / 'tensorflow_datasets'


def _prepared_version(name: str, data_dir: Path) -> str | None:
  """The version a prepared dataset has on disk, found without importing tfds."""
  name, _, version = name.partition(':')
  if version:
    return version if (data_dir / name / version / 'dataset_info.json').exists() else None
  versions = sorted(p.parent.name for p in (data_dir / name).glob('*/dataset_info.json'))
  return versions[-1] if versions else None


def _read_with_tfds(name: str, split: str, data_dir: Path, download: bool) -> Split:
  """Decodes one split: array_record via tfds.data_source (no TensorFlow), else tfds.load."""
  import tensorflow_datasets as tfds  # Imported only on a cache miss: it is slow to import.

  builder = tfds.builder(name, data_dir=str(data_dir))
  if download:
    builder.download_and_prepare()  # A no-op when the dataset is already prepared.
  image_key, label_key = builder.info.supervised_keys or ('image', 'label')
  class_names = tuple(builder.info.features[label_key].names)
  if builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
    source = builder.as_data_source(split=split)
    examples = source.__getitems__(range(len(source)))
    images = np.stack([e[image_key] for e in examples])
    labels = np.array([e[label_key] for e in examples])
  else:
    _check_tensorflow(name, data_dir)
    batches = list(tfds.as_numpy(builder.as_dataset(split=split, batch_size=10_000)))
    images = np.concatenate([b[image_key] for b in batches])
    labels = np.concatenate([b[label_key] for b in batches])
  return Split(images.astype(np.uint8), labels.astype(np.int32), class_names)


def _read_prepared(name: str, split: str, data_dir: Path, download: bool) -> Split:
  """_read_with_tfds, with a copy that tfds cannot read (files missing, damaged) in one line."""
  try:
    return _read_with_tfds(name, split, data_dir, download)
  except UserError:
    raise
  except Exception as error:  # tfds and TensorFlow raise many types for a broken copy.
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    raise UserError(
      f'The {name!r} copy in {data_dir} cannot be read ({type(error).__name__}: {first}); '
      'prepare it again (docs/data.md) or point --config.data.dir elsewhere.'
    ) from None


def _check_tensorflow(name: str, data_dir: Path) -> None:
  """tfrecord copies need TensorFlow, which running this project does not install."""
  if importlib.util.find_spec('tensorflow') is None:
    raise UserError(
      f'The {name!r} copy in {data_dir} is in tfrecord form, which only TensorFlow reads; '
      'install it (pip install -r requirements-dev.txt), or use an array_record copy or, for '
      'MNIST, its original files (docs/data.md).'
    )


def _check_can_download(name: str, data_dir: Path, download: bool) -> None:
  """Fails in seconds where tfds would retry a download for minutes and then fail."""
  where = f'No prepared {name!r} dataset in {data_dir}'
  if not download:
    raise UserError(f'{where}; {PREPARED_COPY}.')
  try:
    socket.create_connection((DOWNLOAD_HOST, 443), timeout=5).close()
  except OSError as error:
    raise UserError(f'{where}, and no network to download it ({error}); {PREPARED_COPY}.') from None


# MNIST without TensorFlow (Colab's TPU runtime): tfds needs TensorFlow to prepare MNIST, so
# there its original files are read instead (mnist_files.py), cached under the version 'files'.
def _reads_original_files(name: str, data_dir: Path) -> bool:
  return (
    name.partition(':')[0] == 'mnist'
    and importlib.util.find_spec('tensorflow') is None
    and _prepared_version(name, data_dir) is None
  )


def _cache_file(name: str, split: str, data_dir: Path, cache_dir) -> Path | None:
  """Where a decoded split is cached; None while the dataset is not prepared on disk."""
  version = 'files' if _reads_original_files(name, data_dir) else _prepared_version(name, data_dir)
  if version is None:
    return None
  where = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
  base = name.partition(':')[0].replace('/', '_')
  file = f'{base}-{version}-{split}-{where}.v{CACHE_FORMAT}.npz'
  return Path(cache_dir or default_cache_dir()) / 'data' / file


def upright(name: str, images: np.ndarray) -> np.ndarray:
  """The images (N, H, W, C) of dataset `name` ('emnist/digits:3.0.0') the right way up."""
  turn = UPRIGHT.get(name.partition(':')[0].partition('/')[0])
  return images if turn is None else turn(images)


def load_split(
  name: str,
  split: str,
  data_dir: str | None = None,
  cache_dir: str | os.PathLike | None = None,
  download: bool = True,
) -> Split:
  """One tfds split as NumPy arrays, decoded once and then read from a .npz cache.

  The cache is keyed by dataset, version, split and data directory and written atomically
  (a temporary file, then a rename), so a killed process never leaves a broken cache; one
  damaged otherwise (disk, user) is decoded again, with a warning. Images come upright.
  """
  stored = _load_stored_split(name, split, data_dir, cache_dir, download)
  return Split(upright(name, stored.images), stored.labels, stored.class_names)


def _load_stored_split(name, split, data_dir, cache_dir, download) -> Split:
  """One split as tfds stores it, from the cache or decoded (and then cached)."""
  data_path = resolve_data_dir(data_dir)
  _check_cache_dir(Path(cache_dir or default_cache_dir()))
  cache_file = _cache_file(name, split, data_path, cache_dir)
  if cache_file is not None and cache_file.exists():
    try:
      with np.load(cache_file) as cached:
        return _checked_cache({name: cached[name] for name in CACHE_SHAPE.fields})
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
      logging.warning('Cache file %s is damaged (%s); decoding the split again.', cache_file, error)
  if cache_file is None:
    _check_can_download(name, data_path, download)
  if _reads_original_files(name, data_path):
    data = Split(*mnist_files.load(split, data_path / 'downloads', download), DIGITS)
  else:
    data = _read_prepared(name, split, data_path, download)
  cache_file = _cache_file(name, split, data_path, cache_dir)
  if cache_file is not None:
    _write_cache(cache_file, data)
  return data


# A decoded split as cached: images (N, H, W, C), labels (N,) below the number of class names.
CACHE_SHAPE = checked.Value(
  dict,
  fields={
    'images': checked.Value(np.ndarray, dtype='uint8', ndim=4),
    'labels': checked.Value(np.ndarray, dtype='int32', ndim=1),
    'class_names': checked.Value(np.ndarray, dtype='U', ndim=1),
  },
)


def _checked_cache(arrays: dict[str, np.ndarray]) -> Split:
  """The cached split, once its arrays fit CACHE_SHAPE and each other; else ValueError."""
  images, labels, names = checked.check(arrays, CACHE_SHAPE).values()
  if not 0 < len(labels) == len(images) or 0 in images.shape or len(names) < 2:
    raise ValueError(f'{len(images)} images, {len(labels)} labels, {len(names)} class names')
  if labels.min() < 0 or labels.max() >= len(names):
    raise ValueError(f'labels from {labels.min()} to {labels.max()} for {len(names)} classes')
  return Split(images, labels, tuple(names.tolist()))


def _check_cache_dir(cache_dir: Path) -> None:
  """A file where the cache directory belongs fails now, not after a minute of decoding."""
  for path in (cache_dir, cache_dir / 'data'):
    if path.exists() and not path.is_dir():
      raise UserError(
        f'run.cache_dir={cache_dir}: {path} is a file, not a directory; move it away or set '
        '--config.run.cache_dir to a directory.'
      )


def _write_cache(cache_file: Path, data: Split) -> None:
  """Writes atomically; a failure (disk full, a file where the directory belongs) removes the
  partial file and is a one-line error naming run.cache_dir."""
  try:
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    with files.beside(cache_file) as partial:
      with open(partial, 'wb') as file:
        np.savez(file, images=data.images, labels=data.labels, class_names=data.class_names)
      partial.replace(cache_file)
  except OSError as error:
    raise UserError(
      f'Cannot write the data cache {cache_file} ({error.strerror or error}); free space there '
      'or set --config.run.cache_dir to a writable directory.'
    ) from None


def split_off_validation(train: Split, fraction: float, data_seed: int) -> tuple[Split, Split]:
  """A fixed validation split: the same examples for every epoch and every run with data_seed."""
  order = np.random.default_rng(data_seed).permutation(len(train))
  num_validation = round(len(train) * fraction)
  if not 0 < num_validation < len(train):  # An empty split's means are NaN; no batch to train.
    kept = 'no validation examples' if num_validation == 0 else 'no training examples'
    raise UserError(
      f'data.validation_fraction={fraction} leaves {kept} of {len(train)}; use a fraction '
      f'between {1 / len(train):.2g} and {1 - 1 / len(train):.6g}, such as 0.1.'
    )
  validation = np.sort(order[:num_validation])
  remaining = np.sort(order[num_validation:])
  return _take(train, remaining), _take(train, validation)


def _take(split: Split, indices: np.ndarray) -> Split:
  return Split(split.images[indices], split.labels[indices], split.class_names)


def load_train_split(config) -> tuple[Split, Split]:
  """The config's train split less its fixed validation split, and that validation split."""
  train = load_split(config.data.name, 'train', config.data.dir, config.run.cache_dir)
  return split_off_validation(train, config.data.validation_fraction, config.data.seed)


def load_splits(config) -> Splits:
  """Train, fixed validation and test splits for a config."""
  train, validation = load_train_split(config)
  test = load_split(config.data.name, 'test', config.data.dir, config.run.cache_dir)
  return Splits(config.data.name, train, validation, test)


def padded_batches(split: Split, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Stacks a split into (steps, batch) arrays; the padding is marked 0 in the mask.

  Evaluation sums over the mask, so every example counts once whatever the batch size.
  """
  steps = -(-len(split) // batch_size)
  pad = steps * batch_size - len(split)
  mask = np.arange(steps * batch_size) < len(split)

  def stack(x):
    x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
    return x.reshape(steps, batch_size, *x.shape[1:])

  return stack(split.images), stack(split.labels), mask.reshape(steps, batch_size)


def epoch_order(
  num_examples: int, batch_size: int, data_seed: int, epoch: int
) -> tuple[np.ndarray, np.ndarray]:
  """One epoch's shuffled batch indices (steps, batch) int32 and mask; the last batch is padded.

  A function of (data_seed, epoch) only, so every process and every resumed run draws the same
  order. NumPy, not the device: on a CPU, jax.random.permutation of 54,000 indices takes 21 ms,
  a tenth of an epoch, against 0.5 ms here.
  """
  order = np.random.default_rng((data_seed, epoch)).permutation(num_examples).astype(np.int32)
  steps = -(-num_examples // batch_size)
  mask = np.arange(steps * batch_size) < num_examples
  padded = np.zeros(steps * batch_size, np.int32)
  padded[:num_examples] = order
  return padded.reshape(steps, batch_size), mask.reshape(steps, batch_size)
