"""Stopping a run on SIGTERM (a preempted VM's notice), SIGHUP (a dropped SSH session) or SIGINT
(Ctrl-C) at a safe point.

The handler only records the signal; the training loop asks `requested` at every step-call
boundary, saves a checkpoint of that exact point and raises Stopped, which main.py turns into
one line and the shell's status for the signal (128 + its number: 143, 129, 130). SIGHUP is
taken as SIGTERM (unless the run was started under nohup). A second signal is never raised: an
exception thrown while XLA runs a long step call (steps_per_call=0) crashed the process inside
XLA (a segmentation fault). It starts the watchdog's clock instead (below).

Outside training (flag parsing, imports, loading and decoding data, restoring, serving)
`exit_on_signals` makes any of them an Interrupted exception at once, which main.py also turns
into one line and 130, 129 or 143.

The watchdog: Python runs a signal's handler only when the main thread is between bytecodes,
never while it blocks in a library's C code (a bucket that does not answer, a coordinator that
never starts, a decode). So each signal also wakes a watchdog thread (signal.set_wakeup_fd). A
signal that should end the process (any outside training, the second one in it) ends it
deadlines.STOP_SECONDS later with one line, saying what is kept, if it has not ended by then.

With several processes, all must stop at the same step. There, as orbax and JAX advise, JAX's
preemption service (started by jax.distributed) takes SIGTERM and the processes agree on the
step through multihost_utils.reached_preemption_sync_point; Ctrl-C keeps Python's default.
"""

import os
import select
import signal
import sys
import threading
import time

from mlp.machinery import deadlines

EXIT_STATUS = {signal.SIGTERM: 143, signal.SIGINT: 130, signal.SIGHUP: 129}
# Every signal this process received, in order: main.py's exit status, whatever raised.
received: list[int] = []
# Seconds from a signal that ends the process to its end, whatever it waits on (serve: less).
stop_seconds = deadlines.STOP_SECONDS
# Whether training has begun: its first signal waits for the next step-call boundary.
_training = threading.Event()
_watchdog = threading.Event()  # Set once its thread runs.
_NOTHING_KEPT = 'nothing was being written'
_CHECKPOINTS_KEPT = (
  'checkpoints written before it are kept, one being written is not; run the same command to '
  'resume from the latest'
)
# What the watchdog's line says is kept: StopRequests sets it while a run can write checkpoints.
kept = _NOTHING_KEPT


class Interrupted(KeyboardInterrupt):
  """SIGINT or SIGTERM outside training: there is no state to save, so stop where we are."""

  def __init__(self, signum: int):
    super().__init__(signal.Signals(signum).name)
    self.exit_status = EXIT_STATUS[signum]


def _interrupt(signum: int, frame) -> None:
  received.append(signum)
  if _importing(frame):  # An exception inside a native module's start-up can crash (SIGSEGV).
    _exit_now()
  raise Interrupted(signum)


def _importing(frame) -> bool:
  while frame is not None:
    if frame.f_code.co_filename.startswith('<frozen importlib'):
      return True
    frame = frame.f_back
  return False


def _exit_now() -> None:
  """One line and the first signal's status, at once: nothing has been written yet."""
  name = signal.Signals(received[0]).name
  sys.stderr.write(f'Stopped by {name} while starting; nothing was written.\n')
  sys.stderr.flush()
  os._exit(EXIT_STATUS[received[0]])


def _record_only(signum: int, frame) -> None:
  received.append(signum)


def finishing() -> None:
  """The run is ending with its status decided: later signals are ignored.

  Ignored, not handled: Python puts back the default handlers (which kill) as it shuts down,
  but leaves ignored signals ignored, so a signal then cannot change the exit status.
  """
  for signum in EXIT_STATUS:
    signal.signal(signum, signal.SIG_IGN)


def _handled() -> list[int]:
  """The signals to handle: SIGHUP only where it is not ignored already (nohup)."""
  return [s for s in EXIT_STATUS if s != signal.SIGHUP or signal.getsignal(s) != signal.SIG_IGN]


def exit_on_signals() -> None:
  """From now on the signals raise Interrupted (training overrides this while it runs).

  One that escapes everything (a signal while main.py imports its modules) ends the process
  with one line and the signal's status, rather than a traceback and status 1.
  """
  for signum in _handled():
    signal.signal(signum, _interrupt)
  _start_watchdog()
  previous = sys.excepthook

  def uncaught(kind, error, traceback) -> None:
    if issubclass(kind, KeyboardInterrupt) and received:
      _exit_now()
    previous(kind, error, traceback)

  sys.excepthook = uncaught


def _start_watchdog() -> None:
  """Once per process: a thread woken by every signal, which bounds the way out (module doc)."""
  if _watchdog.is_set():
    return
  _watchdog.set()
  read_end, write_end = os.pipe()
  os.set_blocking(write_end, False)
  signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
  threading.Thread(target=_watch, args=(read_end,), name='stop-watchdog', daemon=True).start()


def _watch(read_end: int) -> None:
  count, deadline, first = 0, None, 0
  while True:
    timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
    if not select.select([read_end], [], [], timeout)[0]:
      line = f'Stopped by {signal.Signals(first).name}: ended {stop_seconds:g}s after '
      line += 'it while still waiting; ' if count == 1 else 'its second signal; '
      os.write(2, f'{line}{kept}.\n'.encode())
      os._exit(EXIT_STATUS[first])
    for signum in os.read(read_end, 64):
      if signum not in EXIT_STATUS:
        continue
      count += 1
      first = first or signum
      if deadline is None and (count > 1 or not _training.is_set()):
        deadline = time.monotonic() + stop_seconds


def exit_status() -> int | None:
  """The shell's status for the first signal received, or None when there was none."""
  return EXIT_STATUS[received[0]] if received else None


class Stopped(Exception):
  """The run stopped on a signal after saving its checkpoint; args[0] says how to resume."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_status = EXIT_STATUS.get(signum, 1)


class StopRequests:
  """A context in which a signal is recorded rather than acted on, once training has begun.

  Before `begin` (loading and decoding data, restoring, building) there is nothing to save
  yet: a signal raises Interrupted at once. From `begin`, just before the first step call is
  dispatched, it waits for the next boundary.
  """

  def __init__(self):
    self.signum: int | None = None
    self._previous = {}

  def __enter__(self) -> 'StopRequests':
    import jax

    global kept
    kept = _CHECKPOINTS_KEPT
    if threading.current_thread() is threading.main_thread() and jax.process_count() == 1:
      for signum in _handled():
        self._previous[signum] = signal.signal(signum, self._record)
    return self

  def __exit__(self, *exc_info) -> None:
    _training.clear()
    for signum, handler in self._previous.items():
      if self.signum is not None and handler is _interrupt:
        handler = _record_only  # Stopping: a later signal must not cut the way out short.
      signal.signal(signum, handler)

  def _record(self, signum: int, frame) -> None:
    received.append(signum)
    if not _training.is_set():
      raise Interrupted(signum)
    if self.signum is None:
      sys.stderr.write(
        f'{signal.Signals(signum).name}: stopping at the next step-call boundary, with a '
        f'checkpoint of that point (a second signal ends it within {stop_seconds:g}s).\n'
      )
    self.signum = self.signum or signum

  def begin(self) -> None:
    """Training starts: from now on a signal waits for the next step-call boundary."""
    _training.set()

  def requested(self, step: int) -> bool:
    """Whether to stop at this boundary; step must grow by boundary, the same in each process."""
    import jax

    self.begin()

    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      try:
        if multihost_utils.reached_preemption_sync_point(step):
          self.signum = signal.SIGTERM
      except RuntimeError:  # The preemption service is off (jax_enable_preemption_service).
        pass
    return self.signum is not None

  @property
  def name(self) -> str:
    return signal.Signals(self.signum).name if self.signum else ''
