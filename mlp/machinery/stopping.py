"""Stopping a run on SIGTERM (a preempted VM's notice) or SIGINT (Ctrl-C) at a safe point.

The handler only records the signal; the training loop asks `requested` at every step-call
boundary, saves a checkpoint of that exact point and raises Stopped, which main.py turns into
one line and the shell's status for the signal (143, 130). Further signals are recorded too,
never raised: an exception thrown while XLA runs a long step call (steps_per_call=0) crashed
the process inside XLA (a segmentation fault), so the run always waits for the boundary.

Outside training (flag parsing, imports, loading data, serving) `exit_on_signals` makes either
signal an Interrupted exception at once, which main.py also turns into one line and 130 or 143.

With several processes, all must stop at the same step. There, as orbax and JAX advise, JAX's
preemption service (started by jax.distributed) takes SIGTERM and the processes agree on the
step through multihost_utils.reached_preemption_sync_point; Ctrl-C keeps Python's default.
"""

import os
import signal
import sys
import threading

EXIT_STATUS = {signal.SIGTERM: 143, signal.SIGINT: 130}
# Every signal this process received, in order: main.py's exit status, whatever raised.
received: list[int] = []


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


def exit_on_signals() -> None:
  """From now on SIGINT and SIGTERM raise Interrupted (training overrides this while it runs).

  One that escapes everything (a signal while main.py imports its modules) ends the process
  with one line and the signal's status, rather than a traceback and status 1.
  """
  for signum in EXIT_STATUS:
    signal.signal(signum, _interrupt)
  previous = sys.excepthook

  def uncaught(kind, error, traceback) -> None:
    if issubclass(kind, KeyboardInterrupt) and received:
      _exit_now()
    previous(kind, error, traceback)

  sys.excepthook = uncaught


def exit_status() -> int | None:
  """The shell's status for the first signal received, or None when there was none."""
  return EXIT_STATUS[received[0]] if received else None


class Stopped(Exception):
  """The run stopped on a signal after saving its checkpoint; args[0] says how to resume."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_status = EXIT_STATUS.get(signum, 1)


class StopRequests:
  """A context in which SIGTERM and SIGINT are recorded rather than acted on."""

  def __init__(self):
    self.signum: int | None = None
    self._previous = {}

  def __enter__(self) -> 'StopRequests':
    import jax

    if threading.current_thread() is threading.main_thread() and jax.process_count() == 1:
      for signum in EXIT_STATUS:
        self._previous[signum] = signal.signal(signum, self._record)
    return self

  def __exit__(self, *exc_info) -> None:
    for signum, handler in self._previous.items():
      if self.signum is not None and handler is _interrupt:
        handler = _record_only  # Stopping: a later signal must not cut the way out short.
      signal.signal(signum, handler)

  def _record(self, signum: int, frame) -> None:
    received.append(signum)
    if self.signum is not None:
      sys.stderr.write('Already stopping: the checkpoint is written at the next step boundary.\n')
    else:
      sys.stderr.write(
        f'{signal.Signals(signum).name}: stopping at the next step-call boundary, with a '
        'checkpoint of that point.\n'
      )
    self.signum = self.signum or signum

  def requested(self, step: int) -> bool:
    """Whether to stop at this boundary; step must grow by boundary, the same in each process."""
    import jax

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
