"""How many training steps one jitted call runs, chosen by measuring the step on this backend.

A whole epoch under lax.scan is fastest for small models: one dispatch, no host in the loop.
But XLA:CPU runs some operations (convolutions and their gradients) many times slower inside a
loop body than as a program of their own, so a convolutional step can lose 20x in a scan. So
with run.steps_per_call = 0 (auto) the trainer times a few steps both ways on the real data, and:
- where the scan wins, an epoch runs in calls of about CALL_SECONDS each (the whole epoch when
  it is shorter), so that progress can be reported and a stop honoured within seconds;
- where one step per call wins, each call is one step, with the data still on the device.
The choice is saved in the cache directory, keyed by what decides it, so a warm run measures
nothing. How a run is paced never changes its numbers (run.steps_per_call is an execution field).
"""

import hashlib
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from absl import logging

import input_pipeline
from input_pipeline.errors import UserError
from mlp.core import configuration, steps
from mlp.core.fields import Role
from mlp.machinery import checked, devices, files

CALL_SECONDS = 1.5  # A scanned call's target length.
# The scan probe's length: enough steps for a call of PROBE_SECONDS, within these bounds. The
# least is two loop iterations: a scan no longer than its unroll is no loop, and would hide
# what a loop costs. (A call of cheap steps is mostly the call's own overhead.)
PROBE_STEPS = (2 * steps.SCAN_UNROLL, 64)
PROBE_SECONDS = 0.05
# A way that is this many times slower on one timed call has lost; no more repeats of it.
LOST_FACTOR = 3.0
CACHE_FILE = 'pacing.json'
REPEATS = 3  # Timed calls of each way, after a compiling one.


def _key(config) -> str:
  """What the choice depends on: the backend, the devices and everything but execution."""
  paths = configuration.with_role(config, Role.RESULT, Role.SPLIT)
  values = {p: configuration.get(config, p) for p in paths}
  values |= {
    'backend': jax.default_backend(),
    'devices': [d.device_kind for d in jax.devices()],
    'placement': config.run.placement,
  }
  return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cache_path(config) -> Path:
  return Path(config.run.cache_dir or input_pipeline.default_cache_dir()) / CACHE_FILE


# pacing.json: by key, both ways' seconds per step, each positive and under an hour.
SECONDS = checked.Value(float, low=1e-9, high=3600.0)
CACHE_SHAPE = checked.Value(
  dict,
  items=checked.Value(dict, fields={'one_step_seconds': SECONDS, 'scanned_step_seconds': SECONDS}),
)


def timer(call: Callable, state, batches) -> Callable[[int, float | None], float]:
  """seconds_per_step(steps, limit): the median seconds per step of calls of `steps` steps.

  call(state, indices, mask) trains the steps of indices and mask (steps, batch) in one call;
  batches are epoch 1's. The calls run after a first (compiling) one, on a copy of the state
  (they donate it); a call slower than limit per step ends the timing there.
  """

  def seconds_per_step(steps: int, limit: float | None) -> float:
    indices, mask = (x[:steps] for x in batches)
    copy = jax.tree.map(lambda x: x.copy(), state)
    times = []
    for _ in range(REPEATS + 1):
      start = time.perf_counter()
      copy, sums = call(copy, indices, mask)
      jax.block_until_ready((copy, sums))
      times.append((time.perf_counter() - start) / steps)
      if limit is not None and len(times) > 1 and times[-1] > limit:
        break
    return statistics.median(times[1:])

  return seconds_per_step


def _measure(config, seconds_per_step: Callable) -> dict[str, float]:
  """Both ways' seconds per step, from the cache or measured (and then cached)."""
  path, key = _cache_path(config), _key(config)
  cache = checked.read_derived(path, CACHE_SHAPE, 'measuring the pacing again') or {}
  if key in cache:
    return cache[key]
  one = seconds_per_step(1, None)
  steps = int(min(max(PROBE_SECONDS / one, PROBE_STEPS[0]), PROBE_STEPS[1]))
  scanned = seconds_per_step(steps, LOST_FACTOR * one)
  times = {'one_step_seconds': one, 'scanned_step_seconds': scanned}
  if devices.is_main_process():
    try:  # A cache: one that cannot be written costs a measurement next time, not this run.
      path.parent.mkdir(parents=True, exist_ok=True)
      files.write_atomic(path, json.dumps(cache | {key: times}, indent=1))
    except (OSError, UserError) as error:
      logging.warning('Pacing not cached (%s); the next run measures it again.', error)
  return times


def steps_per_call(config, steps_per_epoch: int, seconds_per_step: Callable) -> int:
  """run.steps_per_call if set; else the measured choice (see the module docstring).

  seconds_per_step(n, limit) times calls of n steps (`timer`). With several processes, process
  0's choice holds.
  """
  if config.run.steps_per_call:
    return config.run.steps_per_call
  times = _measure(config, seconds_per_step)
  one, scanned = times['one_step_seconds'], times['scanned_step_seconds']
  if one < scanned:
    chunk = 1
  else:
    calls = max(1, round(steps_per_epoch * scanned / CALL_SECONDS))
    chunk = -(-steps_per_epoch // calls)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    chunk = int(multihost_utils.broadcast_one_to_all(np.int32(chunk)))
  logging.info(
    'Pacing: %d of %d steps per call (a step takes %.3gs alone, %.3gs in a scan).',
    chunk,
    steps_per_epoch,
    one,
    scanned,
  )
  return chunk
