"""How long the project waits for anything outside it: each bound, declared once.

Every wait on a peer (a bucket, the coordinator of a multi-process run, a stop signal's way
out, a serve client) ends by one of these. Each can be changed by its environment variable,
MLP_<NAME> in seconds (docs/deadlines.md lists them); tests set tiny ones.
"""

import contextlib
import os
import sys
import threading
from collections.abc import Iterator


def _seconds(name: str, default: float) -> float:
  """The bound `name`: MLP_<name> from the environment if set, else the default."""
  variable = f'MLP_{name}'
  text = os.environ.get(variable, '').strip()
  if not text:
    return default
  try:
    value = float(text)
  except ValueError:
    value = -1.0
  if not 0 < value < 1e6:  # Read as main.py starts, before it can turn errors into lines.
    sys.stderr.write(f'{variable}={text!r} is not a number of seconds above 0; fix or unset it.\n')
    raise SystemExit(1)
  return value


# One HTTP request to a bucket (gcsfs, google-cloud-storage, tensorstore's connect and stall
# limits). Each library retries a failed request a few times with a growing pause.
STORAGE_SECONDS = _seconds('STORAGE_SECONDS', 30)
# A process of a multi-process run waits this long for all of them to join the coordinator.
COORDINATOR_SECONDS = _seconds('COORDINATOR_SECONDS', 120)
# After a signal that ends the process (a second one while training saves its way out, any
# outside training), whatever it is waiting on, it ends this long after that signal.
STOP_SECONDS = _seconds('STOP_SECONDS', 4)
# serve: after a stop signal, requests in flight get this long, then clients get a JSON 503;
# the process ends 2 s later at the latest (exiting JAX takes about 1.5 s on a busy CPU).
SERVE_SHUTDOWN_SECONDS = _seconds('SERVE_SHUTDOWN_SECONDS', 1)
# serve: a client sending nothing for this long is answered 408 and dropped.
UPLOAD_IDLE_SECONDS = _seconds('UPLOAD_IDLE_SECONDS', 10)
# serve: an image waits this long for the decoding budget (serve.DECODE_PIXELS), then gets 503.
DECODE_WAIT_SECONDS = _seconds('DECODE_WAIT_SECONDS', 10)


@contextlib.contextmanager
def ending_after(seconds: float, line: str, status: int = 1) -> Iterator[None]:
  """Ends the process with `line` and `status` if the block has not finished within seconds.

  For a library call that blocks in C and, when its own limit runs out, aborts the process
  with a stack dump (jax.distributed's connect) rather than raising.
  """
  done = threading.Event()

  def watch() -> None:
    if not done.wait(seconds):
      os.write(2, f'{line}\n'.encode())
      os._exit(status)

  threading.Thread(target=watch, name='deadline', daemon=True).start()
  try:
    yield
  finally:
    done.set()
