"""Library exceptions a user can act on, as one-line UserErrors that say what to do.

The file system (a full disk, a read-only or unwritable directory, a directory where a file
belongs) reaches us as OSError, or as orbax's and tensorstore's errors wrapping one, or only as
their message; a device out of memory as XLA's RESOURCE_EXHAUSTED. Anything else is a bug and
keeps its traceback.
"""

import errno

from input_pipeline.errors import UserError

# errno, words found in wrapped messages, and what to do.
_FILE_FAULTS = (
  (errno.ENOSPC, 'No space left on device', 'free space there, then run the same command again'),
  (errno.EACCES, 'Permission denied', 'make it readable and writable, or use another --workdir'),
  (errno.EPERM, 'Operation not permitted', 'fix its permissions, or use another --workdir'),
  (errno.EROFS, 'Read-only file system', 'use a --workdir on a writable disk'),
  (errno.EISDIR, 'Is a directory', 'a directory stands where a file belongs: move it away'),
  (errno.ENOTDIR, 'Not a directory', 'a file stands where a directory belongs: move it away'),
  (errno.EDQUOT, 'Disk quota exceeded', 'free space in your quota, then run it again'),
)
_MEMORY_HINT = (
  'lower optim.batch_size, run.eval_batch_size or the model size, or set '
  '--config.run.placement=host to keep the training data off the device'
)


def _chain(error: BaseException) -> list[BaseException]:
  """The error and those it was raised from or while handling, innermost last."""
  seen = []
  while error is not None and error not in seen:
    seen.append(error)
    error = error.__cause__ or error.__context__
  return seen


def _first_line(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  return lines[0][:300] if lines else type(error).__name__


def _file_fault(error: BaseException) -> UserError | None:
  for number, words, action in _FILE_FAULTS:
    if isinstance(error, OSError) and error.errno == number:
      where = error.filename or 'a file'
      return UserError(f'{where}: {error.strerror}; {action}.')
    if words in str(error):
      return UserError(f'{_first_line(error)}; {action}.')
  return None


def translate(error: BaseException) -> UserError | None:
  """The one-line error for a fault of the machine, not the code; None for anything else."""
  for link in _chain(error):
    if isinstance(link, UserError):
      return link
    if 'RESOURCE_EXHAUSTED' in str(link) or 'Out of memory' in str(link):
      return UserError(f'The device ran out of memory ({_first_line(link)}); {_MEMORY_HINT}.')
    fault = _file_fault(link)
    if fault is not None:
      return fault
  return None
