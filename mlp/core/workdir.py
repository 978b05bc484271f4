"""One run per workdir: a lock that process 0 holds while it trains there.

The lock is an flock on <workdir>/.lock, which also holds the holder's pid and host for the
message a second run gets. The kernel drops an flock when its process ends, however it ends,
so a lock left by a killed run never blocks. The processes of a multi-process run share their
process 0's lock: it tells all of them whether they may go on, so none waits for a peer that
stopped.
"""

import contextlib
import fcntl
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np

from mlp.core.errors import UserError

LOCK_FILE = '.lock'


def prepare(workdir: Path) -> None:
  """Creates the workdir; a path that is not a directory is a one-line error."""
  if workdir.exists() and not workdir.is_dir():
    raise UserError(f'--workdir={workdir} is a file, not a directory; name a directory.')
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as error:
    raise UserError(f'Cannot create --workdir={workdir} ({error.strerror}).') from None


@contextlib.contextmanager
def left_as_found(workdir: Path, config_file: str = 'config.json') -> Iterator[None]:
  """A start that fails before any checkpoint or epoch record leaves the workdir as it was.

  A directory this start created is removed; in one that existed, config.json gets back its
  old bytes (or goes, if it was not there): a refused or failed start never rewrites it. Once
  a new checkpoint or epoch line exists the run has made progress, and everything stays.
  """
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


def _take(path: Path) -> tuple[int | None, str]:
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
  os.write(descriptor, f'pid {os.getpid()} on host {socket.gethostname()}\n'.encode())
  return descriptor, ''


@contextlib.contextmanager
def locked(workdir: Path) -> Iterator[None]:
  """Holds the workdir's lock (process 0) for the with-block.

  A run already training there makes this a UserError in every process of this run.
  """
  descriptor, holder = _take(workdir / LOCK_FILE) if jax.process_index() == 0 else (None, '')
  refused = descriptor is None and jax.process_index() == 0
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    refused = bool(multihost_utils.broadcast_one_to_all(np.int32(refused)))
  if refused:
    raise UserError(
      f'{workdir} is in use by a run of {holder or "process 0 of another run"}; wait for it to '
      'end or use another --workdir.'
    )
  try:
    yield
  finally:
    if descriptor is not None:
      os.close(descriptor)  # Releases the flock; the file stays, naming the last holder.
