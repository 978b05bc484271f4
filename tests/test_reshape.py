"""A run checkpointed on N devices resumes on M: 8 -> 2, 2 -> 1, 1 -> 4, 2 processes -> 1.

Each run is a subprocess of this file (XLA_FLAGS and jax.distributed must be set before JAX
starts). The first part trains epoch 1 of 2, saves its checkpoint and stops, as a preempted job
does; the second resumes it on another device count at the same global batch. Both must end
where one device trained straight through ends, within the tolerance that 8 devices meet
against 1 (tests/test_distributed.py): sums over a batch split over devices add in another
order, so equality is not bit-exact across shapes.
"""

import faulthandler
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from test_distributed import (
  SPLIT_SIZES,
  TOLERANCE,
  WORKER_SECONDS,
  _free_port,
  serve_saved_splits,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
NUMBERS = ('train_loss', 'train_accuracy', 'val_loss', 'val_accuracy')
# name: (devices per process, processes) saving epoch 1, then devices resuming (one process).
CASES = {
  '8_to_2': (8, 1, 2),
  '2_to_1': (2, 1, 1),
  '1_to_4': (1, 1, 4),
  'processes_2_to_1': (2, 2, 1),
}


class Preempted(Exception):
  """Raised once epoch 1's checkpoint is on disk, as if the job lost its machines there."""


def _worker(splits_file: str, workdir: str, part: str, result_file: str) -> None:
  """Trains 2 epochs in workdir; part 'first' stops after epoch 1's checkpoint."""
  faulthandler.dump_traceback_later(WORKER_SECONDS, exit=True)
  from conftest import tiny_config

  from mlp.core import train
  from mlp.machinery import checkpoint, devices

  devices.initialize_distributed()
  serve_saved_splits(splits_file)
  save = checkpoint.save

  def save_then_stop(manager, state, position):
    save(manager, state, position)
    if part == 'first' and position.epoch == 1:
      manager.wait_until_finished()
      raise Preempted

  checkpoint.save = save_then_stop
  sizes = {'optim.batch_size': 16, 'run.eval_batch_size': 8, 'optim.num_epochs': 2}
  config = tiny_config(Path(workdir), sizes)
  try:
    result = train.train_and_evaluate(config, Path(workdir) / 'run')
  except Preempted:
    result = {}
  Path(result_file).write_text(json.dumps({'devices': jax.device_count(), **result}))


def _start(tmp_path: Path, name: str, part: str, devices: int, process_id=None, **env):
  result_file = tmp_path / f'{name}-{part}-{process_id or 0}.json'
  env = {
    **os.environ,
    'JAX_PLATFORMS': 'cpu',
    'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
    'PYTHONPATH': str(ROOT),
    **env,
  }
  command = [sys.executable, __file__, str(tmp_path / 'splits.npz'), str(tmp_path / name), part]
  process = subprocess.Popen(
    [*command, str(result_file)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
  )
  return process, result_file


def _finish(started: list) -> list[dict]:
  try:
    for process, _ in started:
      output = process.communicate(timeout=WORKER_SECONDS + 30)[0].decode()
      assert process.returncode == 0, output[-3000:]
  finally:
    for process, _ in started:
      process.kill()
  return [json.loads(result_file.read_text()) for _, result_file in started]


def _first_parts(tmp_path: Path) -> list:
  started = [_start(tmp_path, 'straight', 'whole', 1)]
  for name, (devices, processes, _) in CASES.items():
    if processes == 1:
      started.append(_start(tmp_path, name, 'first', devices))
      continue
    coordinator = {
      'JAX_COORDINATOR_ADDRESS': f'localhost:{_free_port()}',
      'JAX_NUM_PROCESSES': str(processes),
    }
    for i in range(processes):
      process_env = {'JAX_PROCESS_ID': str(i), **coordinator}
      started.append(_start(tmp_path, name, 'first', devices, i, **process_env))
  return started


@pytest.fixture(scope='module')
def runs(tmp_path_factory) -> dict[str, dict]:
  """What each resumed run returned, and the straight run's, by case name."""
  tmp_path = tmp_path_factory.mktemp('reshape')
  rng = np.random.default_rng(1)
  arrays = {}
  for name, size in zip('tvs', SPLIT_SIZES, strict=True):
    arrays[f'{name}_images'] = rng.integers(0, 256, (size, 28, 28, 1), np.uint8)
    arrays[f'{name}_labels'] = rng.integers(0, 10, size, np.int32)
  np.savez(tmp_path / 'splits.npz', **arrays)
  first = _finish(_first_parts(tmp_path))
  assert all('records' not in r for r in first[1:]), 'each first part stopped after epoch 1'
  resumed = _finish([_start(tmp_path, name, 'second', case[2]) for name, case in CASES.items()])
  return {'straight': first[0], **dict(zip(CASES, resumed, strict=True))}


@pytest.mark.parametrize('case', list(CASES))
def test_resumed_on_another_device_count_ends_where_one_device_does(runs, case):
  got, want = runs[case], runs['straight']
  assert got['devices'] == CASES[case][2]
  assert [r['epoch'] for r in got['records']] == [1, 2], 'epoch 1 kept from the first part'
  for got_epoch, want_epoch in zip(got['records'], want['records'], strict=True):
    for key in NUMBERS:
      np.testing.assert_allclose(got_epoch[key], want_epoch[key], **TOLERANCE)
  for key in ('test_loss', 'test_accuracy'):
    np.testing.assert_allclose(got[key], want[key], **TOLERANCE)


if __name__ == '__main__':
  _worker(*sys.argv[1:])
