"""Fault injection: damaged files, concurrent runs, signals, divergence and bad input.

Each case asserts the exit status (or the exception main.py turns into it), a one-line message
without a traceback, and what the workdir holds afterwards: nothing lost, nothing left stuck.
In-process cases send signals from inside the training loop, so each moment is exact; the
subprocess cases check what a user sees from main.py.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import ROOT, prepare_mock, run_main, tiny_config
from PIL import Image

import input_pipeline
from mlp.core import checkpoint, configuration, reporting, stopping, train, trainer
from mlp.core import workdir as lock
from mlp.core.errors import UserError
from mlp.reader import export, predict

pytestmark = pytest.mark.integration

DEFAULT = str(ROOT / 'configs' / 'default.py')
TIMING = ('epoch_seconds', 'examples_per_sec')


def numbers(workdir):
  lines = (workdir / reporting.METRICS_FILE).read_text().splitlines()
  return [{k: v for k, v in json.loads(x).items() if k not in TIMING} for x in lines]


def params_of(workdir):
  *_, params = checkpoint.restore_for_inference(workdir)
  return jax.tree.leaves(params)


def assert_same_run(workdir, straight):
  assert numbers(workdir) == numbers(straight)
  for a, b in zip(params_of(workdir), params_of(straight), strict=True):
    np.testing.assert_array_equal(a, b)


def step_dirs(workdir):
  found = (workdir / checkpoint.CHECKPOINT_DIR).glob('*')
  return sorted((p for p in found if p.name.isdigit()), key=lambda p: int(p.name))


def damage(step_dir):
  for path in step_dir.rglob('*'):
    if path.is_file():
      path.write_bytes(b'\x00garbage' * (path.stat().st_size // 8 + 1))


# Two epochs of 6 steps (60 mock examples less 10% validation, batches of 10), 2 steps a call.
SMALL = {'optim.num_epochs': 2, 'run.steps_per_call': 2}


@pytest.fixture
def straight(tmp_path, mock_mnist):
  workdir = tmp_path / 'straight'
  train.train_and_evaluate(tiny_config(tmp_path, SMALL), workdir)
  return workdir


def signal_after(monkeypatch, signum, boundary):
  """Sends signum to this process once the training loop has passed `boundary` step calls."""
  calls = trainer.epoch_calls
  seen = []

  def counting(*args, **kwargs):
    for item in calls(*args, **kwargs):
      seen.append(item)
      if len(seen) == boundary:
        os.kill(os.getpid(), signum)
      yield item

  monkeypatch.setattr(trainer, 'epoch_calls', counting)


# Boundaries 1 and 4 are mid-epoch (steps 2 of epoch 1, 2 of epoch 2); 3 ends epoch 1.
@pytest.mark.parametrize(
  ('signum', 'boundary'), [(signal.SIGTERM, 1), (signal.SIGINT, 3), (signal.SIGTERM, 4)]
)
def test_signal_saves_that_point_and_resumes_bit_exact(
  tmp_path, straight, monkeypatch, signum, boundary
):
  config = tiny_config(tmp_path, SMALL)
  workdir = tmp_path / 'run'
  signal_after(monkeypatch, signum, boundary)
  with pytest.raises(stopping.Stopped, match=r'--workdir=.*to resume') as stopped:
    train.train_and_evaluate(config, workdir)
  assert stopped.value.exit_status == {signal.SIGTERM: 143, signal.SIGINT: 130}[signum]
  assert '\n' not in str(stopped.value)
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, 'handlers are restored'
  assert int(step_dirs(workdir)[-1].name) == boundary * 2, 'the checkpoint is of that step'
  assert not list((workdir / checkpoint.CHECKPOINT_DIR).glob('*tmp*'))
  monkeypatch.undo()
  prepare_mock(tmp_path / 'tfds', 'mnist')
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=60):
    train.train_and_evaluate(config, workdir)
  assert_same_run(workdir, straight)


def test_sigterm_during_an_async_save_keeps_it(tmp_path, mock_mnist, monkeypatch):
  save = checkpoint.save

  def save_then_signal(manager, state, position):
    save(manager, state, position)
    if position.epoch == 1:
      os.kill(os.getpid(), signal.SIGTERM)  # While orbax writes in the background.

  monkeypatch.setattr(checkpoint, 'save', save_then_signal)
  config = tiny_config(tmp_path, {'optim.num_epochs': 3})
  workdir = tmp_path / 'run'
  with pytest.raises(stopping.Stopped, match='in epoch 2 after step 6 of 6') as stopped:
    train.train_and_evaluate(config, workdir)
  assert stopped.value.exit_status == 143
  # One call per epoch: the next boundary is the end of epoch 2, saved as well.
  assert [int(p.name) for p in step_dirs(workdir)] == [6, 12]
  assert [r['epoch'] for r in numbers(workdir)] == [1, 2]
  monkeypatch.setattr(checkpoint, 'save', save)
  result = train.train_and_evaluate(config, workdir)
  assert [r['epoch'] for r in result['epochs']] == [1, 2, 3]


def test_damaged_metrics_line_is_rebuilt_from_a_checkpoint(tmp_path, straight, mock_mnist):
  config = tiny_config(tmp_path, SMALL)
  workdir = tmp_path / 'run'
  train.train_and_evaluate(config, workdir)
  path = workdir / reporting.METRICS_FILE
  lines = path.read_text().splitlines()
  path.write_text('\n'.join([lines[0], lines[1][:25]]) + '\n')  # Epoch 2 cut, test line lost.
  train.train_and_evaluate(config, workdir)
  assert_same_run(workdir, straight)


def test_damaged_cache_is_decoded_again(tmp_path, mock_mnist, caplog):
  config = tiny_config(tmp_path)
  first = input_pipeline.load_split('mnist', 'test', config.data.dir, config.run.cache_dir)
  (cache,) = (tmp_path / 'cache' / 'data').glob('mnist-*-test-*.npz')
  cache.write_bytes(cache.read_bytes()[:100])
  again = input_pipeline.load_split('mnist', 'test', config.data.dir, config.run.cache_dir)
  np.testing.assert_array_equal(again.images, first.images)
  assert f'Cache file {cache} is damaged' in caplog.text
  with np.load(cache) as rewritten:
    np.testing.assert_array_equal(rewritten['labels'], first.labels)


def test_damaged_checkpoint_is_skipped_read_only_and_set_aside_uniquely(
  tmp_path, mock_mnist, capfd
):
  config = tiny_config(tmp_path, {'optim.num_epochs': 2})
  workdir = tmp_path / 'run'
  train.train_and_evaluate(config, workdir)
  latest = step_dirs(workdir)[-1]
  for attempt in range(3):
    damage(latest)
    capfd.readouterr()
    before = sorted(p.relative_to(workdir) for p in workdir.rglob('*'))
    train.evaluate_checkpoint(workdir)
    assert sorted(p.relative_to(workdir) for p in workdir.rglob('*')) == before, 'eval wrote'
    assert 'Exception ignored' not in capfd.readouterr().err
    train.train_and_evaluate(config, workdir)  # Sets it aside, trains epoch 2 again.
    aside = sorted(p.name for p in (workdir / checkpoint.UNREADABLE_DIR).iterdir())
    assert len(aside) == attempt + 1 and aside[0] == latest.name
    assert latest.is_dir()


def test_workdir_with_only_config_json_is_left_alone(tmp_path, mock_mnist):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  configuration.save(tiny_config(tmp_path), workdir)
  with pytest.raises(UserError, match='train into this workdir first'):
    train.evaluate_checkpoint(workdir)
  assert [p.name for p in workdir.iterdir()] == [configuration.CONFIG_FILE]


def test_a_second_run_is_refused_with_the_holders_pid(tmp_path, mock_mnist):
  workdir = tmp_path / 'run'
  lock.prepare(workdir)
  with lock.locked(workdir), pytest.raises(UserError, match=f'pid {os.getpid()} on host'):
    train.train_and_evaluate(tiny_config(tmp_path), workdir)
  assert not (workdir / reporting.METRICS_FILE).exists()


def test_a_killed_holder_never_blocks(tmp_path):
  workdir = tmp_path / 'run'
  holder = subprocess.Popen(
    [
      sys.executable,
      '-c',
      'import fcntl, os, sys, time\n'
      f'f = os.open({str(workdir / lock.LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)\n'
      'fcntl.flock(f, fcntl.LOCK_EX); print(1, flush=True); time.sleep(60)',
    ],
    stdout=subprocess.PIPE,
  )
  workdir.mkdir()
  holder.stdout.readline()
  with pytest.raises(UserError, match='in use'), lock.locked(workdir):
    pass
  holder.kill()
  holder.wait()
  with lock.locked(workdir):
    pass


def test_diverging_loss_that_is_not_nan_stops(tmp_path, mock_mnist):
  config = tiny_config(tmp_path, {'optim.learning_rate': 1e6, 'optim.num_epochs': 2})
  with pytest.raises(UserError, match=r'\(diverged\).*new --workdir'):
    train.train_and_evaluate(config, tmp_path / 'run')
  assert not step_dirs(tmp_path / 'run')


def test_background_save_error_is_one_line(tmp_path, mock_mnist, monkeypatch):
  def failing(*args, **kwargs):
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(checkpoint.ocp.CheckpointManager, 'wait_until_finished', failing)
  with pytest.raises(UserError, match='Writing a checkpoint in .* failed.*No space') as error:
    train.train_and_evaluate(tiny_config(tmp_path), tmp_path / 'run')
  assert '\n' not in str(error.value)


def one_error_line(result, status=1) -> str:
  assert result.returncode == status, result.stderr
  assert 'Traceback' not in result.stderr and 'Exception ignored' not in result.stderr
  (line,) = [x for x in result.stderr.splitlines() if x.startswith(('E', 'W', 'FATAL'))]
  return line


@pytest.mark.slow
def test_bad_config_files_and_flags_are_one_line(tmp_path):
  (tmp_path / 'syntax.py').write_text('def get_config(:\n')
  (tmp_path / 'raises.py').write_text('def get_config():\n  raise ValueError("no such option")\n')
  (tmp_path / 'file').write_text('')
  cases = [
    ([f'--config={ROOT}/configs/defualt.py'], 'no such file; use one of configs/best.py'),
    ([f'--config={tmp_path}/syntax.py'], 'syntax.py, line 1: invalid syntax'),
    ([f'--config={tmp_path}/raises.py'], 'ValueError: no such option'),
    ([f'--config={DEFAULT}', '--config.mlp.hidden_sizes='], 'mlp.hidden_sizes'),
    ([f'--config={DEFAULT}', '--config.mlp.hidden_sizes=abc'], 'mlp.hidden_sizes'),
    ([f'--config={DEFAULT}', f'--workdir={tmp_path}/file'], 'is a file, not a directory'),
  ]
  for args, message in cases:
    assert message in one_error_line(run_main(*args)), args
  workdir = tmp_path / 'run'
  workdir.mkdir()
  values = configuration.to_dict(configuration.defaults())
  del values['optim.batch_size']
  (workdir / configuration.CONFIG_FILE).write_text(json.dumps(values))
  line = one_error_line(run_main('--mode=eval', f'--workdir={workdir}'))
  assert 'missing optim.batch_size' in line
  assert [p.name for p in workdir.iterdir()] == [configuration.CONFIG_FILE]


def cached_mock_splits(tmp_path, num_examples=400):
  """Random MNIST-shaped splits in a data cache, so a main.py subprocess reads them fast."""
  prepare_mock(tmp_path / 'tfds', 'mnist')
  rng = np.random.default_rng(0)
  for split in ('train', 'test'):
    path = input_pipeline._cache_file('mnist', split, tmp_path / 'tfds', tmp_path / 'cache')
    path.parent.mkdir(parents=True, exist_ok=True)
    images = rng.integers(0, 256, (num_examples, 28, 28, 1), np.uint8)
    labels = rng.integers(0, 10, num_examples).astype(np.int32)
    np.savez(path, images=images, labels=labels, class_names=tuple('0123456789'))
  return [
    f'--config={DEFAULT}',
    f'--config.data.dir={tmp_path / "tfds"}',
    f'--config.run.cache_dir={tmp_path / "cache"}',
    '--config.run.compilation_cache=False',
    '--config.mlp.hidden_sizes=16',
    '--config.optim.batch_size=4',
    '--config.run.steps_per_call=1',
    '--config.optim.num_epochs=3',
  ]


@pytest.mark.slow
@pytest.mark.parametrize(('signum', 'status'), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_main_stops_on_a_signal_with_one_line_and_resumes(tmp_path, signum, status):
  args = cached_mock_splits(tmp_path)
  straight = run_main(*args, f'--workdir={tmp_path / "straight"}')
  assert straight.returncode == 0, straight.stderr
  workdir = tmp_path / 'run'
  command = [sys.executable, str(ROOT / 'main.py'), *args, f'--workdir={workdir}']
  process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  while not step_dirs(workdir) and time.time() < deadline:  # Epoch 1 saved, epoch 2 running.
    time.sleep(0.01)
  process.send_signal(signum)
  _, stderr = process.communicate(timeout=120)
  result = subprocess.CompletedProcess(command, process.returncode, '', stderr)
  assert 'to resume' in one_error_line(result, status)
  assert not list((workdir / checkpoint.CHECKPOINT_DIR).glob('*tmp*'))
  resumed = run_main(*args, f'--workdir={workdir}')
  assert resumed.returncode == 0, resumed.stderr
  assert_same_run(workdir, tmp_path / 'straight')


def test_read_only_modes_leave_the_workdir_as_it_was(tmp_path, mock_mnist, capsys):
  """Eval, predict (saving its inputs elsewhere) and export: no file added, changed or removed."""
  workdir = tmp_path / 'run'
  train.train_and_evaluate(tiny_config(tmp_path), workdir)

  def snapshot():
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(workdir.rglob('*'))}

  before = snapshot()
  train.evaluate_checkpoint(workdir)
  image = tmp_path / 'digit.png'
  Image.fromarray(np.pad(np.full((12, 4), 255, np.uint8), 8)).save(image)
  assert predict.run(workdir, [str(image)], 'json', str(tmp_path / 'seen')) == 0
  written = export.run(workdir)
  assert written == tmp_path / 'run.jax' and written.stat().st_size > 1000
  with pytest.raises(UserError, match='inside the run directory'):
    export.run(workdir, workdir / 'model.jax')
  assert snapshot() == before
