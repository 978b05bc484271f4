"""What a benchmark figure was measured on, so figures from two machines can be compared.

The CPU's model name (platform.processor() says only 'x86_64' on Linux), the accelerator's kind,
the exact commit and whether the working tree differed from it, the Python, jax and jaxlib
versions, and how many compilations JAX's persistent cache answered: a compile_seconds of 0.09 is
a cache read, not a fast compiler. The cache is counted from JAX's own monitoring events, from
the moment this module is imported (import it before the first compilation).
"""

import os
import platform
import subprocess
from pathlib import Path

import jax
import jaxlib
from jax import monitoring

# JAX records the first for every compilation that may use the persistent cache, the second
# for each one the cache answered (jax/_src/compiler.py).
CACHE_REQUEST_EVENT = '/jax/compilation_cache/compile_requests_use_cache'
CACHE_HIT_EVENT = '/jax/compilation_cache/cache_hits'
_cache_events = {CACHE_REQUEST_EVENT: 0, CACHE_HIT_EVENT: 0}


def _count_cache_event(event: str, **_) -> None:
  if event in _cache_events:
    _cache_events[event] += 1


monitoring.register_event_listener(_count_cache_event)


def cpu_model(cpuinfo: Path = Path('/proc/cpuinfo')) -> str:
  """The CPU's marketing name ('AMD EPYC 9B14'), or platform's best guess where there is no
  /proc/cpuinfo (macOS, Windows)."""
  try:
    for line in cpuinfo.read_text().splitlines():
      key, _, value = line.partition(':')
      if key.strip() == 'model name' and value.strip():
        return value.strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
  """git's output in this checkout, or None without git or outside a repository."""
  try:
    return subprocess.run(
      ['git', *args], capture_output=True, text=True, cwd=Path(__file__).parent, check=True
    ).stdout
  except (OSError, subprocess.CalledProcessError):
    return None


def compile_cache(requests: int, hits: int) -> str:
  """'off' (no compilation asked the persistent cache), 'hit' (it answered all), 'miss'
  (none) or 'partial'."""
  if requests == 0:
    return 'off'
  return 'hit' if hits == requests else 'miss' if hits == 0 else 'partial'


def machine_facts() -> dict:
  """The machine, code and cache facts of a benchmark record, JSON-ready."""
  device = jax.devices()[0]
  commit = _git('rev-parse', '--short', 'HEAD')
  status = _git('status', '--porcelain')
  requests, hits = _cache_events[CACHE_REQUEST_EVENT], _cache_events[CACHE_HIT_EVENT]
  return {
    'backend': jax.default_backend(),
    'device_kind': device.device_kind,
    'device_count': jax.device_count(),
    'cpu': cpu_model(),
    'cpu_count': os.cpu_count(),
    'python_version': platform.python_version(),
    'jax_version': jax.__version__,
    'jaxlib_version': jaxlib.__version__,
    'xla_flags': os.environ.get('XLA_FLAGS', ''),
    'git_commit': commit.strip() if commit else None,
    # Uncommitted or untracked (not ignored) files: the commit alone does not name the code.
    'git_dirty': None if status is None else bool(status.strip()),
    'compile_cache': compile_cache(requests, hits),
    'compile_cache_requests': requests,
    'compile_cache_hits': hits,
  }
