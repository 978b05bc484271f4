"""One run per workdir: a lock that process 0 holds while it trains there.

The lock is an flock on <workdir>/.lock, which also holds the holder's pid and host for the
message a second run gets. The kernel drops an flock when its process ends, however it ends,
so a lock left by a killed run never blocks. The processes of a multi-process run share their
process 0's lock: it tells all of them whether they may go on, so none waits for a peer that
stopped.

A bucket (gs://) has no flock: there the lock is the object <workdir>/.lock, created only if
absent (an upload conditioned on generation 0, which the bucket grants to one writer) and
holding a lease: the holder renews it every LEASE_SECONDS / 3 (conditioned on its own
generation) and deletes it at the end. A killed run's lock blocks until its lease runs out;
then the next run takes it over, conditioned on the generation it read, so of two runs that
try at once exactly one gets it. Leases compare the hosts' clocks, which NTP keeps within far
less than LEASE_SECONDS of each other.
"""

import contextlib
import fcntl
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np
from absl import logging

from input_pipeline.errors import UserError
from mlp.machinery import deadlines, files

LOCK_FILE = '.lock'
LEASE_SECONDS = 60.0
CHECK_SECONDS = 2.0  # How often a bucket run makes sure its lock object is still there.


def prepare(workdir: files.AnyPath) -> None:
  """Creates the workdir; a path that is not a directory is a one-line error."""
  try:
    if workdir.exists() and not workdir.is_dir():
      raise UserError(f'--workdir={workdir} is a file, not a directory; name a directory.')
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as error:
    raise UserError(f'Cannot create --workdir={workdir} ({files.first_line(error)}).') from None


def refuse_foreign(workdir: files.AnyPath) -> None:
  """A workdir is a run's or nobody's: training refuses a directory that holds files but no
  config.json (not a run of this code), and a run whose checkpoints are not a directory,
  before it reads or writes anything there."""
  names = sorted(p.name for p in workdir.iterdir()) if workdir.is_dir() else []
  # The lock, and a file being written by process 0 of this run (files.beside) are this run's.
  foreign = [n for n in names if n != LOCK_FILE and not (n[0] == '.' and n.endswith('.tmp'))]
  if foreign and 'config.json' not in names:
    shown = ', '.join(foreign[:3]) + (', ...' if len(foreign) > 3 else '')
    raise UserError(
      f'--workdir={workdir} holds files ({shown}) but no config.json: it is not a run of this '
      'code; name a new or empty directory.'
    )
  checkpoints = workdir / 'checkpoints'
  if checkpoints.exists() and not checkpoints.is_dir():
    raise UserError(
      f'{checkpoints} is not a directory, where this run keeps its checkpoints; move it away '
      '(or back) and run the same command again.'
    )


@contextlib.contextmanager
def left_as_found(workdir: files.AnyPath, config_file: str = 'config.json') -> Iterator[None]:
  """A start that fails before any checkpoint or epoch record leaves the workdir as it was.

  A directory this start created is removed; in one that existed, config.json gets back its
  old bytes (or goes, if it was not there): a refused or failed start never rewrites it. Once
  a new checkpoint or epoch line exists the run has made progress, and everything stays.
  """
  if files.in_bucket(workdir):  # Objects are not restored: a bucket has no such promise here.
    yield
    return
  workdir = Path(workdir)
  created = [p for p in (workdir, *workdir.parents) if not p.exists()]  # runs/ too, for one.
  config = workdir / config_file
  old_config = config.read_bytes() if config.is_file() else None
  progress = _progress(workdir)
  try:
    yield
  except BaseException:
    if _progress(workdir) == progress:
      with contextlib.suppress(OSError):
        _restore(created, config, old_config)
    raise


def _progress(workdir: Path) -> tuple[set[str], int]:
  """The checkpoints' steps and the size of metrics.jsonl: what a run that trained has added."""
  steps, size = set(), 0
  with contextlib.suppress(OSError):
    steps = {p.name for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit()}
  with contextlib.suppress(OSError):
    size = (workdir / 'metrics.jsonl').stat().st_size
  return steps, size


def _restore(created: list[Path], config: Path, old_config: bytes | None) -> None:
  if created:
    shutil.rmtree(created[0], ignore_errors=True)
    for parent in created[1:]:
      parent.rmdir()  # Empty unless another process wrote there meanwhile: then it stays.
  elif old_config is None:
    config.unlink(missing_ok=True)
  elif not config.is_file() or config.read_bytes() != old_config:
    config.write_bytes(old_config)


def _holder() -> str:
  return f'pid {os.getpid()} on host {socket.gethostname()}'


def _take(path: files.AnyPath) -> tuple[int | None, str]:
  """The open, locked file descriptor, or None and who holds the lock."""
  try:
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as error:
    raise UserError(
      f'Cannot open the lock file {path} ({error.strerror}); it must be a file this user may '
      'write: move it away or fix its permissions.'
    ) from None
  try:
    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = os.read(descriptor, 200).decode(errors='replace').strip() or 'another process'
    os.close(descriptor)
    return None, holder
  os.ftruncate(descriptor, 0)
  os.write(descriptor, f'{_holder()}\n'.encode())
  return descriptor, ''


class _Lease:
  """The lock object of a workdir in a bucket, renewed on a thread while it is held."""

  def __init__(self, path: files.AnyPath):
    self._blob = files.blob(path)
    self._done = threading.Event()
    self._thread = threading.Thread(target=self._renew, daemon=True)

  def take(self) -> str:
    """'' once this run holds the lock, else who holds it."""
    from google.api_core import exceptions

    try:
      self._write(if_generation_match=0)
      return ''
    except exceptions.PreconditionFailed:
      pass
    try:
      # The live generation, to which the read and the takeover are bound.
      live = self._blob.bucket.get_blob(self._blob.name, timeout=deadlines.STORAGE_SECONDS)
      generation = live and live.generation
      if not generation:  # Released meanwhile; a takeover is never unconditional.
        return 'a run that took the lock at the same moment'
      held = json.loads(
        live.download_as_text(if_generation_match=generation, timeout=deadlines.STORAGE_SECONDS)
      )
      if held['expires'] > time.time():
        return held['holder']
      logging.warning('Taking over the lock of %s, whose lease ran out.', held['holder'])
      self._write(if_generation_match=generation)
      return ''
    except (exceptions.PreconditionFailed, exceptions.NotFound):
      return 'a run that took the lock at the same moment'

  def hold(self) -> None:
    self._thread.start()

  def release(self) -> None:
    """Deletes the lock, if its generation is still this run's; the run ends either way.

    Not retried: a bucket out of reach leaves a lock that blocks only until its lease ends.
    """
    self._done.set()
    self._thread.join(timeout=1)
    with contextlib.suppress(Exception):
      self._blob.delete(
        if_generation_match=self._blob.generation, retry=None, timeout=deadlines.STORAGE_SECONDS
      )

  def _write(self, **options) -> None:
    lease = {'holder': _holder(), 'expires': time.time() + LEASE_SECONDS}
    self._blob.upload_from_string(json.dumps(lease), timeout=deadlines.STORAGE_SECONDS, **options)

  def _renew(self) -> None:
    """Renews the lease every LEASE_SECONDS / 3, and every CHECK_SECONDS makes sure the lock
    object is still this run's; one deleted or replaced by another run ends this one."""
    from google.api_core import exceptions

    renewed = time.monotonic()
    while not self._done.wait(min(CHECK_SECONDS, LEASE_SECONDS / 3)):
      try:
        if time.monotonic() - renewed >= LEASE_SECONDS / 3:
          self._write(if_generation_match=self._blob.generation, retry=None)
          renewed = time.monotonic()
          continue
        live = self._blob.bucket.get_blob(
          self._blob.name, retry=None, timeout=deadlines.STORAGE_SECONDS
        )
        if live is None or live.generation != self._blob.generation:
          raise exceptions.PreconditionFailed('the lock object changed')
      except (exceptions.PreconditionFailed, exceptions.NotFound):
        if not self._done.is_set():  # Released meanwhile: that is this run's own delete.
          lost(self._blob.name)
        return
      except Exception as error:  # The next renewal tries again, within the lease.
        logging.warning('Renewing the lock %s failed: %s', self._blob.name, files.first_line(error))


def lost(name: str) -> None:
  """Ends this process at once, with one line: its lock object was deleted or taken, so
  another run may write in the workdir; anything this one wrote after that could mix with it."""
  logging.error(
    'The lock %s of this run was deleted or replaced while it trained, so another run may '
    'write there; stopped at once, keeping the checkpoints written so far. Make sure one run '
    'at a time uses this --workdir, then run the same command again.',
    name,
  )
  logging.flush()
  os._exit(1)


@contextlib.contextmanager
def _lock_object(path: files.AnyPath) -> Iterator[str]:
  """Yields '' while this run holds the bucket's lock object, else who holds it."""
  lease = _Lease(path)
  try:
    holder = lease.take()
  except OSError as error:
    raise UserError(f'Cannot reach {path} ({files.first_line(error)}).') from None
  if holder:
    yield holder
    return
  lease.hold()
  try:
    yield ''
  finally:
    lease.release()


@contextlib.contextmanager
def _lock_file(path: files.AnyPath) -> Iterator[str]:
  """Yields '' while this run holds the flock, else who holds it."""
  descriptor, holder = _take(path)
  try:
    yield holder
  finally:
    if descriptor is not None:
      os.close(descriptor)  # Releases the flock; the file stays, naming the last holder.


@contextlib.contextmanager
def locked(workdir: files.AnyPath) -> Iterator[None]:
  """Holds the workdir's lock (process 0) for the with-block.

  A run already training there makes this a UserError in every process of this run.
  """
  with contextlib.ExitStack() as stack:
    holder = ''
    if jax.process_index() == 0:
      take = _lock_object if files.in_bucket(workdir) else _lock_file
      holder = stack.enter_context(take(workdir / LOCK_FILE)) or ''
    _refuse_in_every_process(workdir, holder)
    yield


def _refuse_in_every_process(workdir: files.AnyPath, holder: str) -> None:
  """A UserError in every process if process 0 found the lock held (holder)."""
  refused = bool(holder)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    refused = bool(multihost_utils.broadcast_one_to_all(np.int32(refused)))
  if refused:
    raise UserError(
      f'{workdir} is in use by a run of {holder or "process 0 of another run"}; wait for it to '
      'end or use another --workdir.'
    )
