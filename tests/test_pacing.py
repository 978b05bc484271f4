"""Pacing: steps per call chosen from measured step times, cached, and never changing numbers."""

import pytest
from conftest import tiny_config

from mlp.machinery import pacing

pytestmark = pytest.mark.unit


def timer(one: float, scanned: float, calls: list):
  def seconds_per_step(steps: int, limit: float | None) -> float:
    calls.append(steps)
    return one if steps == 1 else scanned

  return seconds_per_step


def test_a_set_steps_per_call_is_kept_unmeasured(tmp_path):
  calls = []
  config = tiny_config(tmp_path, {'run.steps_per_call': 7})
  assert pacing.steps_per_call(config, 540, timer(1.0, 1.0, calls)) == 7
  assert calls == []


def test_a_step_that_loses_in_a_scan_runs_one_per_call(tmp_path):
  config = tiny_config(tmp_path, {'run.steps_per_call': 0})
  assert pacing.steps_per_call(config, 540, timer(0.05, 1.0, [])) == 1


def test_a_scan_that_wins_runs_calls_of_about_call_seconds(tmp_path):
  config = tiny_config(tmp_path, {'run.steps_per_call': 0})
  chunk = pacing.steps_per_call(config, 1000, timer(0.02, 0.01, []))
  assert chunk * 0.01 == pytest.approx(pacing.CALL_SECONDS, rel=0.2)
  short = tiny_config(tmp_path / 'short', {'run.steps_per_call': 0})
  assert pacing.steps_per_call(short, 540, timer(1e-3, 3e-4, [])) == 540  # 0.16 s: one call.


def test_the_measurement_is_cached_per_model_and_backend(tmp_path):
  calls = []
  config = tiny_config(tmp_path, {'run.steps_per_call': 0})
  first = pacing.steps_per_call(config, 540, timer(0.05, 1.0, calls))
  assert pacing.steps_per_call(config, 540, timer(1.0, 0.05, calls)) == first
  assert calls[0] == 1 and pacing.PROBE_STEPS[0] <= calls[1] <= pacing.PROBE_STEPS[1]
  other = tiny_config(tmp_path, {'run.steps_per_call': 0, 'optim.batch_size': 20})
  pacing.steps_per_call(other, 540, timer(1.0, 0.05, calls))
  assert len(calls) == 4
