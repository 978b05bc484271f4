"""Workdir files on a local disk or in a bucket (gs://), through etils epath as orbax and tfds.

A bucket is not a disk. It has no rename (epath's rename copies, then deletes) and no append,
but every upload replaces an object whole: readers see the old object or the new one, never a
part. And each object version has a generation number, which an upload or a delete can be made
conditional on (`if_generation_match`; 0 means "only if absent"): that is the bucket's
compare-and-swap, on which the workdir's lock is built (mlp/machinery/lock.py). So an atomic
write is a temporary file renamed on a disk, and a single upload in a bucket.
"""

import contextlib
import functools
import math
import os
import pathlib
import secrets
import stat
from collections.abc import Iterator

import fsspec
from etils import epath

from input_pipeline.errors import UserError
from mlp.machinery import deadlines

# gs:// goes through gcsfs (fsspec), not TensorFlow's gfile, whether or not TensorFlow is
# installed: training does not need TensorFlow, and gcsfs, like the google-cloud-storage
# client of the lock, honours STORAGE_EMULATOR_HOST.
os.environ.setdefault('EPATH_USE_TF', 'false')


def _bound_storage_requests() -> None:
  """Every request to a bucket gives up after deadlines.STORAGE_SECONDS, in each library.

  tensorstore (orbax's arrays) reads its own variables: without TENSORSTORE_GCS_HTTP_URL it
  goes to the real endpoint even with an emulator set, and waits there with no answer.
  """
  seconds = deadlines.STORAGE_SECONDS
  fsspec.config.conf.setdefault('gs', {}).setdefault('requests_timeout', seconds)
  whole = str(math.ceil(seconds))
  os.environ.setdefault('TENSORSTORE_CURL_CONNECT_TIMEOUT_SECONDS', whole)
  os.environ.setdefault('TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS', whole)  # Stalled this long,
  os.environ.setdefault('TENSORSTORE_CURL_LOW_SPEED_LIMIT_BYTES', '1')  # under 1 byte a second.
  emulator = os.environ.get('STORAGE_EMULATOR_HOST', '').strip()
  if emulator:
    scheme = '' if '://' in emulator else 'http://'
    os.environ.setdefault('TENSORSTORE_GCS_HTTP_URL', scheme + emulator)


_bound_storage_requests()


# A path on a disk stays a pathlib.Path, whose stat() and errors callers know; one in a bucket
# is an epath.Path, which has the same methods for what a workdir needs.
AnyPath = epath.Path | pathlib.Path


def path(value: str | os.PathLike) -> AnyPath:
  """A workdir or a file: a bucket's URL as an epath.Path, a local path made absolute."""
  text = os.fspath(value)
  return epath.Path(text) if '://' in text else pathlib.Path(text).absolute()


def in_bucket(value: str | os.PathLike) -> bool:
  return os.fspath(value).startswith('gs://')


def read_bytes(source: AnyPath) -> bytes:
  """A whole file the project reads; one that is not a regular file is a one-line UserError.

  A FIFO, a socket or a device would block the read, or never end it. An object in a bucket
  is always regular; a directory raises IsADirectoryError, as open() does.
  """
  if in_bucket(source):
    return source.read_bytes()
  mode = os.stat(source).st_mode
  if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
    raise UserError(
      f'{source} is not a regular file (a FIFO, socket or device); move it away, then run '
      'the same command again.'
    )
  with open(source, 'rb') as file:
    return file.read()


def write_atomic(target: AnyPath, data: str | bytes) -> None:
  """Replaces target whole: readers, and a run killed meanwhile, see the old data or the new.

  A local file is written beside it and renamed over it; an object is uploaded once.
  """
  data = data.encode() if isinstance(data, str) else data
  with writing(target):
    if in_bucket(target):
      target.write_bytes(data)
      return
    with beside(target) as partial:
      partial.write_bytes(data)
      partial.replace(target)


@contextlib.contextmanager
def beside(target: pathlib.Path) -> Iterator[pathlib.Path]:
  """A new empty file in target's directory to write and then rename over target; removed if
  it is still there at the end.

  Its name ('.<target>.<random>.tmp') is created exclusively, so it is never a user's file;
  its mode is a new file's (tempfile's would be 0600, and the renamed file private).
  """
  partial = target.with_name(f'.{target.name}.{secrets.token_hex(6)}.tmp')
  os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
  try:
    yield partial
  finally:
    partial.unlink(missing_ok=True)


@contextlib.contextmanager
def writing(target: AnyPath) -> Iterator[None]:
  """Turns a failed write of target into a one-line UserError.

  What fails differs by path: OSError on a disk; in a bucket, once the clients' retries are
  spent, aiohttp's and requests' connection errors (OSErrors too) or google.api_core's errors.
  """
  try:
    yield
  except UserError:
    raise
  except Exception as error:
    raise UserError(
      f'Writing {target} failed ({first_line(error)}); fix the cause (disk space, permissions, '
      'the network) and run the same command again.'
    ) from None


def first_line(error: BaseException) -> str:
  """The error's type and the first line of its message, for a one-line report."""
  lines = str(error).strip().splitlines()
  return f'{type(error).__name__}: {lines[0][:200] if lines else ""}'


def blob(target: epath.Path):
  """The google-cloud-storage Blob of a gs:// path, for uploads with generation conditions."""
  bucket, _, name = os.fspath(target).removeprefix('gs://').partition('/')
  return _client().bucket(bucket).blob(name)


@functools.cache
def _client():
  from google.cloud import storage

  return storage.Client()
