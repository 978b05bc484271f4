"""An image classifier in JAX, on floors that import only downwards.

core:       what a researcher reads and changes: the config schema, models, steps, metrics,
            the optimizer, augmentation, building, the trainer and the loop.
machinery:  what makes a run safe, which a researcher need not open: checkpoints, the lock,
            files, the metrics sink, pacing, devices, stopping, faults and limits.
tools:      built on the loop: benchmark, A/B, FLOPs, sweeps and studies, the accelerator check.
reader:     the product for people: reading their images, export and the web app.
"""

import os
import time


def _seconds_since_process_start() -> float:
  """How long ago the OS started this process (Linux), so that imports count too; else 0."""
  try:
    with open('/proc/self/stat') as stat, open('/proc/uptime') as uptime:
      start_ticks = int(stat.read().rsplit(')', 1)[1].split()[19])
      return float(uptime.read().split()[0]) - start_ticks / os.sysconf('SC_CLK_TCK')
  except (OSError, ValueError, IndexError):
    return 0.0


# When this process started, on time.perf_counter's clock: records' elapsed_seconds count from it.
STARTED = time.perf_counter() - _seconds_since_process_start()
