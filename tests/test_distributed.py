"""One epoch on 8 devices, or on 2 processes of 2 devices, matches one device.

Each run is a subprocess of this file: the simulated device count (XLA_FLAGS) and
jax.distributed must be set before JAX starts. All runs read the same random splits, made once
by the test, so only the devices differ; the subprocesses run side by side to share the wait.
"""

import faulthandler
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from mlp.machinery import checkpoint

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
PLACEMENTS = ('device', 'host')
NUMBERS = ('train_loss', 'train_accuracy', 'val_loss', 'val_accuracy')
# Sums over 16-example batches reduce in another order when split over devices.
TOLERANCE = dict(rtol=1e-5, atol=1e-6)
WORKER_SECONDS = 120
# Random MNIST-shaped train, validation and test splits: 14 steps of 16, the last one padded.
SPLIT_SIZES = (216, 24, 60)


def _worker(splits_file: str, workdir: str, result_file: str) -> None:
  """Trains one epoch per placement on the saved splits and writes what it returned."""
  faulthandler.dump_traceback_later(WORKER_SECONDS, exit=True)  # A stuck collective ends.
  from conftest import tiny_config

  from mlp.core import train
  from mlp.machinery import devices

  devices.initialize_distributed()  # From JAX_COORDINATOR_ADDRESS etc., when the test sets them.
  serve_saved_splits(splits_file)
  results = {'devices': jax.device_count(), 'processes': jax.process_count()}
  for placement in PLACEMENTS:
    sizes = {'optim.batch_size': 16, 'run.eval_batch_size': 8, 'run.placement': placement}
    config = tiny_config(Path(workdir), sizes)
    results[placement] = train.train_and_evaluate(config, Path(workdir) / placement)
  Path(result_file).write_text(json.dumps(results))


def serve_saved_splits(splits_file: str) -> None:
  """Makes every load of splits in this process return the test's saved random splits."""
  import input_pipeline

  with np.load(splits_file) as data:
    splits = input_pipeline.Splits(
      'mnist',
      *(
        input_pipeline.Split(data[f'{name}_images'], data[f'{name}_labels'], tuple('0123456789'))
        for name in 'tvs'
      ),
    )
  input_pipeline.load_splits = lambda *args, **kwargs: splits


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _start(tmp_path: Path, name: str, devices: int, process_id: int | None = None, **env) -> tuple:
  """Starts a worker; returns it with the file its results will be in."""
  result_file = tmp_path / f'{name}-{process_id or 0}.json'
  env = {
    **os.environ,
    'JAX_PLATFORMS': 'cpu',
    'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
    'PYTHONPATH': str(ROOT),
    **env,
  }
  command = [sys.executable, __file__, str(tmp_path / 'splits.npz'), str(tmp_path / name)]
  process = subprocess.Popen(
    [*command, str(result_file)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
  )
  return process, result_file


@pytest.fixture(scope='module')
def runs(tmp_path_factory) -> dict[str, list[dict]]:
  """Results per run name, one per process: 1, 4 and 8 devices, and 2 processes of 2."""
  tmp_path = tmp_path_factory.mktemp('distributed')
  rng = np.random.default_rng(0)
  arrays = {}
  for name, size in zip('tvs', SPLIT_SIZES, strict=True):
    arrays[f'{name}_images'] = rng.integers(0, 256, (size, 28, 28, 1), np.uint8)
    arrays[f'{name}_labels'] = rng.integers(0, 10, size, np.int32)
  np.savez(tmp_path / 'splits.npz', **arrays)

  coordinator = {'JAX_COORDINATOR_ADDRESS': f'localhost:{_free_port()}', 'JAX_NUM_PROCESSES': '2'}
  started = {
    name: [_start(tmp_path, name, devices)]
    for name, devices in (('one', 1), ('four', 4), ('eight', 8))
  }
  started['two_processes'] = [
    _start(tmp_path, 'two_processes', 2, i, JAX_PROCESS_ID=str(i), **coordinator) for i in (0, 1)
  ]
  try:
    for process, _ in (p for ps in started.values() for p in ps):
      output = process.communicate(timeout=WORKER_SECONDS + 30)[0].decode()
      assert process.returncode == 0, output[-3000:]
  finally:
    for process, _ in (p for ps in started.values() for p in ps):
      process.kill()
  runs = {name: [json.loads(f.read_text()) for _, f in ps] for name, ps in started.items()}
  runs['workdir'] = tmp_path
  return runs


def _assert_same_numbers(actual: dict, expected: dict) -> None:
  for placement in PLACEMENTS:
    got, want = actual[placement], expected[placement]
    assert len(got['records']) == len(want['records']) == 1
    for key in NUMBERS:
      np.testing.assert_allclose(got['records'][0][key], want['records'][0][key], **TOLERANCE)
    for key in ('test_loss', 'test_accuracy'):
      np.testing.assert_allclose(got[key], want[key], **TOLERANCE)


def _assert_same_params(workdir: Path, expected_workdir: Path) -> None:
  """The saved final parameters, read back on this test's single device."""
  for placement in PLACEMENTS:
    *_, params = checkpoint.restore_for_inference(workdir / placement)
    *_, expected = checkpoint.restore_for_inference(expected_workdir / placement)
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(expected), strict=True):
      np.testing.assert_allclose(np.asarray(got), np.asarray(want), **TOLERANCE)


def test_eight_devices_match_one(runs):
  (one,), (eight,) = runs['one'], runs['eight']
  assert (one['devices'], eight['devices']) == (1, 8)
  _assert_same_numbers(eight, one)
  _assert_same_params(runs['workdir'] / 'eight', runs['workdir'] / 'one')


def test_two_processes_match_one_process_of_four_devices(runs):
  (four,), processes = runs['four'], runs['two_processes']
  assert [(p['devices'], p['processes']) for p in processes] == [(4, 2), (4, 2)]
  _assert_same_numbers(processes[1], processes[0])  # Global metrics, not each one's share.
  _assert_same_numbers(processes[0], four)
  _assert_same_params(runs['workdir'] / 'two_processes', runs['workdir'] / 'four')
  for placement in PLACEMENTS:
    records = (runs['workdir'] / 'two_processes' / placement / 'metrics.jsonl').read_text()
    assert [json.loads(line) for line in records.splitlines()][0] == processes[0][placement][
      'records'
    ][0]


if __name__ == '__main__':
  _worker(*sys.argv[1:])
