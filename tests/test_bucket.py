"""Workdirs in a bucket (gs://), against a GCS emulator on loopback that this module starts.

main.py runs in subprocesses, as a user runs it, on random MNIST-shaped splits in a data cache;
one run on a local disk is the reference that every run in the bucket must match bit for bit.
The emulator keeps its objects on disk, so one stopped and started again has them all.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import ROOT, prepare_mock
from etils import epath
from PIL import Image

import input_pipeline
from mlp.machinery import checkpoint, files, lock, reporting

pytestmark = pytest.mark.integration

BUCKET = 'bucket'
TIMING = reporting.TIMINGS
# 180 training examples in batches of 8: 23 steps an epoch, 3 steps a call, 3 epochs.
SETTINGS = {
  'mlp.hidden_sizes': 16,
  'optim.batch_size': 8,
  'run.steps_per_call': 3,
  'optim.num_epochs': 3,
}


class Emulator:
  """gcp-storage-emulator (tests/gcs_emulator.py) on a free loopback port, with its data dir."""

  def __init__(self, data_dir: Path):
    self.data_dir = data_dir
    with socket.socket() as s:
      s.bind(('127.0.0.1', 0))
      self.port = s.getsockname()[1]
    url = f'http://127.0.0.1:{self.port}'
    self.env = {
      'STORAGE_EMULATOR_HOST': url,  # gcsfs and google-cloud-storage.
      'TENSORSTORE_GCS_HTTP_URL': url,  # orbax's arrays.
      'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'none',
      'GOOGLE_CLOUD_PROJECT': 'test',
      'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false',  # The emulator has no control-plane API.
    }
    self.process = None

  def start(self) -> None:
    command = [sys.executable, str(ROOT / 'tests' / 'gcs_emulator.py')]
    self.process = subprocess.Popen(
      [*command, str(self.port), str(self.data_dir), BUCKET],
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
      with socket.socket() as s:
        if s.connect_ex(('127.0.0.1', self.port)) == 0:
          return
      time.sleep(0.05)
    raise TimeoutError('the GCS emulator did not start')

  def stop(self) -> None:
    self.process.terminate()
    self.process.wait(timeout=30)


@pytest.fixture(scope='module')
def gcs(tmp_path_factory):
  """The running emulator; this process reads the bucket through it too."""
  emulator = Emulator(tmp_path_factory.mktemp('gcs'))
  emulator.start()
  saved = {name: os.environ.get(name) for name in emulator.env}
  os.environ.update(emulator.env)
  files._client.cache_clear()
  yield emulator
  emulator.stop()
  for name, value in saved.items():
    if value is None:
      os.environ.pop(name, None)
    else:
      os.environ[name] = value
  files._client.cache_clear()


@pytest.fixture(scope='module')
def data_args(tmp_path_factory) -> list[str]:
  """Flags for main.py that train on random splits cached in a temporary directory."""
  tmp_path = tmp_path_factory.mktemp('data')
  prepare_mock(tmp_path / 'tfds', 'mnist')
  rng = np.random.default_rng(0)
  for split in ('train', 'test'):
    path = input_pipeline._cache_file('mnist', split, tmp_path / 'tfds', tmp_path / 'cache')
    path.parent.mkdir(parents=True, exist_ok=True)
    images = rng.integers(0, 256, (200, 28, 28, 1), np.uint8)
    labels = rng.integers(0, 10, 200).astype(np.int32)
    np.savez(path, images=images, labels=labels, class_names=tuple('0123456789'))
  return [
    f'--config={ROOT / "configs" / "default.py"}',
    f'--config.data.dir={tmp_path / "tfds"}',
    f'--config.run.cache_dir={tmp_path / "cache"}',
    '--config.run.compilation_cache=False',
    *(f'--config.{name}={value}' for name, value in SETTINGS.items()),
  ]


def command(*args: str) -> list[str]:
  return [sys.executable, str(ROOT / 'main.py'), *args]


def main(*args: str) -> subprocess.CompletedProcess:
  result = subprocess.run(command(*args), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.fixture(scope='module')
def straight(tmp_path_factory, data_args) -> Path:
  """The reference: the same run on a local disk, never stopped."""
  workdir = tmp_path_factory.mktemp('straight') / 'run'
  main(*data_args, f'--workdir={workdir}')
  return workdir


def numbers(workdir) -> list[dict]:
  lines = (files.path(workdir) / reporting.METRICS_FILE).read_text().splitlines()
  return [{k: v for k, v in json.loads(x).items() if k not in TIMING} for x in lines]


def assert_same_run(workdir: str, straight: Path) -> None:
  """The same numbers, and the same final parameters read back from the bucket, bit for bit."""
  assert numbers(workdir) == numbers(straight)
  *_, params = checkpoint.restore_for_inference(workdir)
  *_, expected = checkpoint.restore_for_inference(straight)
  for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(expected), strict=True):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def objects(prefix: str) -> list[str]:
  """Object names under gs://BUCKET/prefix/, relative to it."""
  blobs = files._client().list_blobs(BUCKET, prefix=f'{prefix}/')
  return sorted(b.name.removeprefix(f'{prefix}/') for b in blobs)


def committed_steps(prefix: str) -> list[str]:
  names = objects(f'{prefix}/{checkpoint.CHECKPOINT_DIR}')
  return sorted({n.split('/')[0] for n in names if n.endswith('/commit_success.txt')})


def wait_for_checkpoint(prefix: str, process: subprocess.Popen) -> None:
  deadline = time.time() + 240
  while not committed_steps(prefix) and process.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert process.poll() is None, 'the run ended before it could be interrupted'


def test_a_run_in_a_bucket_matches_one_on_disk_and_is_read_back(gcs, data_args, straight, tmp_path):
  workdir = f'gs://{BUCKET}/run'
  main(*data_args, f'--workdir={workdir}')
  assert_same_run(workdir, straight)
  names = objects('run')
  for name in ('config.json', 'dataset.json', 'training_curves.png', 'misclassified.png'):
    assert name in names
  assert any(n.startswith('tensorboard/events.out.tfevents.') for n in names)
  assert not [n for n in names if n == lock.LOCK_FILE or n.endswith('.tmp')], names
  assert len(committed_steps('run')) == 2  # run.keep_checkpoints

  evaluated = main('--mode=eval', f'--workdir={workdir}').stderr
  assert f'test_accuracy: {numbers(straight)[-1]["test_accuracy"]:.4g}' in evaluated
  main('--mode=export', f'--workdir={workdir}')
  assert epath.Path(f'gs://{BUCKET}/run.jax').stat().length > 1000
  image = tmp_path / 'digit.png'
  Image.fromarray(np.pad(np.full((12, 4), 255, np.uint8), 8)).save(image)
  predict = ['--mode=predict', f'--workdir={workdir}', f'--image={image}', '--output=json']
  predicted = subprocess.run(command(*predict), capture_output=True, text=True, timeout=300)
  assert f'Restored checkpoint gs://{BUCKET}/run/checkpoints/' in predicted.stderr
  answer = json.loads(predicted.stdout.splitlines()[-1])  # A digit, or a refusal: this model
  assert answer['path'] == str(image)  # is tiny and untrained, and may find no digit.
  assert predicted.returncode == (1 if 'error' in answer else 0), predicted.stderr[-2000:]


def test_sigterm_in_a_bucket_saves_and_resumes_bit_exact(gcs, data_args, straight):
  workdir = f'gs://{BUCKET}/stopped'
  process = subprocess.Popen(
    command(*data_args, f'--workdir={workdir}'), stderr=subprocess.PIPE, text=True
  )
  wait_for_checkpoint('stopped', process)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 143, stderr[-3000:]
  assert 'to resume' in stderr.splitlines()[-1] and 'Traceback' not in stderr
  assert lock.LOCK_FILE not in objects('stopped')
  main(*data_args, f'--workdir={workdir}')
  assert_same_run(workdir, straight)


def test_bucket_lock_refuses_a_second_run_and_takes_over_an_expired_lease(gcs, monkeypatch):
  from input_pipeline.errors import UserError

  monkeypatch.setattr(lock, 'LEASE_SECONDS', 0.6)
  workdir = epath.Path(f'gs://{BUCKET}/locked')
  with lock.locked(workdir):
    time.sleep(1.5)  # Past the first lease: renewals keep it.
    with pytest.raises(UserError, match=rf'in use by a run of pid {os.getpid()} on host'):
      with lock.locked(workdir):
        pass
  assert not (workdir / lock.LOCK_FILE).exists(), 'released'

  monkeypatch.setattr(lock, 'LEASE_SECONDS', 60.0)  # The winner's lease outlasts the race.
  stale = {'holder': 'pid 1 on host gone', 'expires': time.time() - 1}
  files.blob(workdir / lock.LOCK_FILE).upload_from_string(json.dumps(stale))  # As a run does.
  results = []
  racers = [
    threading.Thread(target=lambda: results.append(lock._Lease(workdir / lock.LOCK_FILE).take()))
    for _ in range(4)
  ]
  for racer in racers:
    racer.start()
  for racer in racers:
    racer.join()
  assert results.count('') == 1, results  # The generation condition lets exactly one in.


def test_a_bucket_lock_deleted_under_its_run_stops_that_run(gcs, monkeypatch):
  monkeypatch.setattr(lock, 'CHECK_SECONDS', 0.05)
  stopped = []
  monkeypatch.setattr(lock, 'lost', stopped.append)
  workdir = epath.Path(f'gs://{BUCKET}/deleted')
  with lock.locked(workdir):
    files.blob(workdir / lock.LOCK_FILE).delete()  # By hand, or by a cleanup of the bucket.
    deadline = time.time() + 10
    while not stopped and time.time() < deadline:
      time.sleep(0.05)
  assert stopped == ['deleted/.lock']


def test_a_sweep_writes_its_results_to_a_bucket(gcs, data_args):
  sweep_args = [
    f'--config={ROOT / "configs" / "sweep.py"}',
    *(a for a in data_args[1:] if not a.startswith('--config.optim.num_epochs=')),
    '--config.optim.num_epochs=1',
    '--config.optim.warmup_epochs=0',
    '--config.sweep.num_random=2',
  ]
  main('--mode=sweep', *sweep_args, f'--workdir=gs://{BUCKET}/sweep')
  assert objects('sweep') == ['best_config.py', 'sweep.jsonl', 'sweep.md']
  assert len(epath.Path(f'gs://{BUCKET}/sweep/sweep.jsonl').read_text().splitlines()) == 2


def test_two_processes_train_into_one_bucket_workdir(gcs, data_args, straight):
  """jax.distributed: both processes write their checkpoint parts, process 0 the rest."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=2'
  distributed = [f'--coordinator_address=localhost:{port}', '--num_processes=2']
  processes = [
    subprocess.Popen(
      command(*data_args, f'--workdir=gs://{BUCKET}/two', *distributed, f'--process_id={i}'),
      env=env,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in (0, 1)
  ]
  for process in processes:
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
  got, want = numbers(f'gs://{BUCKET}/two'), numbers(straight)
  assert [sorted(r) for r in got] == [sorted(r) for r in want]
  for got_record, want_record in zip(got, want, strict=True):
    for key, value in want_record.items():
      np.testing.assert_allclose(got_record[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
  assert len(committed_steps('two')) == 2
