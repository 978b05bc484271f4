"""Fault injection: damaged files, concurrent runs, signals, divergence and bad input.

Each case asserts the exit status (or the exception main.py turns into it), a one-line message
without a traceback, and what the workdir holds afterwards: nothing lost, nothing left stuck.
In-process cases send signals from inside the training loop, so each moment is exact; the
subprocess cases check what a user sees from main.py.
"""

import contextlib
import copy
import dataclasses
import errno
import fcntl
import functools
import gc
import io
import json
import math
import operator
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import numpy as np
import pytest
from absl import flags
from conftest import ROOT, prepare_mock, run_main, tiny_config
from PIL import Image

import input_pipeline
from input_pipeline.errors import UserError
from mlp.core import configuration, train
from mlp.machinery import (
  checked,
  checkpoint,
  faults,
  lock,
  pacing,
  reporting,
  run_config,
  stopping,
)
from mlp.reader import export, predict

pytestmark = pytest.mark.integration

DEFAULT = str(ROOT / 'configs' / 'default.py')
TIMING = reporting.TIMINGS


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
  calls = train.train_steps
  seen = []

  def counting(*args, **kwargs):
    result = calls(*args, **kwargs)
    seen.append(result)
    if len(seen) == boundary:
      os.kill(os.getpid(), signum)
    return result

  monkeypatch.setattr(train, 'train_steps', counting)


# Boundaries 1 and 4 are mid-epoch (steps 2 of epoch 1, 2 of epoch 2); 3 ends epoch 1.
@pytest.mark.parametrize(
  ('signum', 'boundary'), [(signal.SIGTERM, 1), (signal.SIGINT, 3), (signal.SIGTERM, 4)]
)
def test_signal_saves_that_point_and_resumes_bit_exact(
  tmp_path, straight, monkeypatch, signum, boundary
):
  config = tiny_config(tmp_path, SMALL)
  workdir = tmp_path / 'run'
  signal.signal(signal.SIGTERM, signal.SIG_DFL)  # As a fresh process has it (main.py sets its own).
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
  assert [r['epoch'] for r in result['records']] == [1, 2, 3]


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


def test_eval_reads_again_when_training_replaces_its_checkpoint(
  tmp_path, mock_mnist, monkeypatch, caplog
):
  """With run.keep_checkpoints=1 a training run deletes the checkpoint an eval is reading."""
  workdir = tmp_path / 'run'
  train.train_and_evaluate(tiny_config(tmp_path, {'optim.num_epochs': 2}), workdir)
  latest = step_dirs(workdir)[-1]
  restore, calls = checkpoint._restore, []

  def replaced_mid_read(manager, step, abstract_state):
    calls.append(step)
    if len(calls) == 1:
      shutil.move(latest, tmp_path / 'deleted')
      raise FileNotFoundError(latest)
    return restore(manager, step, abstract_state)

  monkeypatch.setattr(checkpoint, '_restore', replaced_mid_read)
  train.evaluate_checkpoint(workdir)
  assert calls == [int(latest.name), int(step_dirs(workdir)[-1].name)]
  assert 'cannot be read' not in caplog.text


def test_workdir_with_only_config_json_is_left_alone(tmp_path, mock_mnist):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  run_config.save(tiny_config(tmp_path), workdir)
  with pytest.raises(UserError, match='train into this workdir first'):
    train.evaluate_checkpoint(workdir)
  assert [p.name for p in workdir.iterdir()] == [run_config.CONFIG_FILE]


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


def without(args: list[str], fields: list[str]) -> list[str]:
  """args less the --config.x flags that fields set again (main.py refuses a repeat)."""
  names = {f.partition('=')[0] for f in fields if f.startswith('--config.')}
  return [a for a in args if a.partition('=')[0] not in names]


def overridden(args: list[str], *more: str) -> list[str]:
  """args, then more; a --config.x in more replaces args' own."""
  return [*without(args, more), *more]


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
  predict.run(workdir, [str(image)], 'json', str(tmp_path / 'seen'))  # A tiny model may refuse.
  assert '"path"' in capsys.readouterr().out
  written = export.run(workdir)
  assert written == tmp_path / 'run.jax' and written.stat().st_size > 1000
  with pytest.raises(UserError, match='inside the run directory'):
    export.run(workdir, workdir / 'model.jax')
  assert snapshot() == before


# The fault table: every fault a user can meet from main.py, run as main.py runs it. Each case
# names the command, the exit status, a fragment of its one line, and the files that must keep
# their bytes (or their absence). All of them run in one driver subprocess (this file run as a
# script: one JAX start for the lot); the signal cases below need a process each.


@dataclasses.dataclass(frozen=True)
class Case:
  """One fault: main.py's arguments ('{dir}' is the case's directory, '{data}' the tiny data
  flags, '{trained}' a copy of a trained run), what it must end with, and what it must keep."""

  name: str
  args: tuple[str, ...]
  status: int
  message: str
  unchanged: tuple[str, ...] = ()  # Paths under the case's directory.
  setup: Callable[[Path], None] | None = None
  creates: str = ''  # A glob under the case's directory that must match afterwards.


def _file(relative: str, text: str = '') -> Callable[[Path], None]:
  def setup(directory: Path) -> None:
    (directory / relative).parent.mkdir(parents=True, exist_ok=True)
    (directory / relative).write_text(text)

  return setup


def _directory(relative: str) -> Callable[[Path], None]:
  return lambda directory: (directory / relative).mkdir(parents=True)


def _trained(change: Callable[[Path], None] | None = None) -> Callable[[Path], None]:
  """A copy of the driver's trained run (2 epochs) in {dir}/run, then `change` applied to it."""

  def setup(directory: Path) -> None:
    shutil.copytree(directory.parent / 'trained', directory / 'run')
    if change is not None:
      change(directory / 'run')

  return setup


def _as_directory(relative: str) -> Callable[[Path], None]:
  """The run's file at relative replaced by a directory."""

  def change(run: Path) -> None:
    (run / relative).unlink()
    (run / relative).mkdir()

  return change


def _as_file(relative: str) -> Callable[[Path], None]:
  """The run's directory at relative replaced by a file."""

  def change(run: Path) -> None:
    shutil.rmtree(run / relative)
    (run / relative).write_text('mine')

  return change


def _edit_latest_meta(**values) -> Callable[[Path], None]:
  """The latest checkpoint's meta with values set (None: removed)."""

  def change(run: Path) -> None:
    meta = step_dirs(run)[-1] / 'meta' / 'metadata'
    edited = {**json.loads(meta.read_text()), **values}
    meta.write_text(json.dumps({k: v for k, v in edited.items() if v is not None}))

  return change


def _edit_config(**values) -> Callable[[Path], None]:
  def change(run: Path) -> None:
    path = run / run_config.CONFIG_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))

  return change


def _drop_fields(*paths: str) -> Callable[[Path], None]:
  """config.json as code older than those fields wrote it."""

  def drop(run: Path) -> None:
    path = run / run_config.CONFIG_FILE
    values = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in values.items() if k not in paths}))

  return drop


def _damage_steps(which: slice) -> Callable[[Path], None]:
  return lambda run: [damage(step) for step in step_dirs(run)[which]]


def _damage_files(pattern: str) -> Callable[[Path], None]:
  """Garbage in the latest checkpoint's files that match pattern, the rest left whole."""

  def change(run: Path) -> None:
    for path in step_dirs(run)[-1].glob(pattern):
      if path.is_file():
        path.write_bytes(b'\x00garbage' * (path.stat().st_size // 8 + 1))

  return change


def _set_format_version(run: Path) -> None:
  for meta in (run / checkpoint.CHECKPOINT_DIR).glob('*/meta/metadata'):
    meta.write_text(json.dumps({**json.loads(meta.read_text()), 'format_version': 1}))


_HELD = []


def _held_lock(relative: str) -> Callable[[Path], None]:
  """Another run holds the lock: an flock on a second open file, as another process would."""

  def setup(directory: Path) -> None:
    (directory / relative).mkdir(parents=True, exist_ok=True)
    descriptor = os.open(directory / relative / lock.LOCK_FILE, os.O_RDWR | os.O_CREAT)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    os.write(descriptor, b'pid 4242 on host elsewhere\n')
    _HELD.append(descriptor)

  return setup


def _cnn_without_checkpoint(directory: Path) -> None:
  run = directory / 'run'
  shutil.copytree(directory.parent / 'trained', run)
  shutil.rmtree(run / checkpoint.CHECKPOINT_DIR)
  _edit_config(model='cnn')(run)
  values = json.loads((run / run_config.CONFIG_FILE).read_text())
  values = {k: v for k, v in values.items() if not k.startswith('mlp.')}
  values.update({'cnn.conv_features': [4, 8], 'cnn.dense_size': 16})
  (run / run_config.CONFIG_FILE).write_text(json.dumps(values))


def _lab_tiff(directory: Path) -> None:
  Image.new('LAB', (40, 40)).save(directory / 'lab.tif')


TRAIN = ('--mode=train', '{data}')
RUN = '--workdir={dir}/run'
CONFIG = 'run/config.json'
CASES = [
  # Help.
  Case('--help', ('--help',), 0, '--config.<group>.<field>=<value>'),
  Case('-h lists the modes', ('-h',), 0, 'serve     a web page'),
  Case('--help lists the groups', ('--help', '{data}'), 0, 'optim     optimizer, batch_size'),
  # Flags and config files.
  Case('unknown mode', ('--mode=fly', '{data}'), 1, 'is not a mode'),
  Case('eval without workdir', ('--mode=eval',), 1, 'needs --workdir'),
  Case('train without config', ('--mode=train',), 1, 'needs --config'),
  Case('flag of another mode', (*TRAIN, '--image=x.png'), 1, 'is a flag of --mode=predict'),
  Case('eval given a config', ('--mode=eval', '{data}', RUN), 1, 'drop --config'),
  Case('serve port too high', ('--mode=serve', RUN, '--port=70000'), 1, 'range [0, 65535]'),
  Case('serve port negative', ('--mode=serve', RUN, '--port=-1'), 1, 'range [0, 65535]'),
  Case('output format unknown', ('--mode=predict', RUN, '--output=xml'), 1, 'one of <text|json>'),
  Case('unknown field', (*TRAIN, '--config.optim.batchsize=3'), 1, 'unknown config field'),
  Case('old flat field', (*TRAIN, '--config.batch_size=3'), 1, 'now optim.batch_size'),
  Case('missing config file', ('--config=configs/defualt.py',), 1, 'use one of configs/best.py'),
  Case('config is a directory', ('--config=configs',), 1, 'no such file'),
  Case(
    'config syntax error', ('--config={dir}/c.py',), 1, 'line 1', setup=_file('c.py', 'def (:\n')
  ),
  Case(
    'config raises',
    ('--config={dir}/c.py',),
    1,
    'ValueError: no such option',
    setup=_file('c.py', 'def get_config():\n  raise ValueError("no such option")\n'),
  ),
  Case('empty hidden sizes', (*TRAIN, '--config.mlp.hidden_sizes=', RUN), 1, 'mlp.hidden_sizes'),
  Case('text hidden sizes', (*TRAIN, '--config.mlp.hidden_sizes=abc', RUN), 1, 'hidden_sizes'),
  Case('zero batch', (*TRAIN, '--config.optim.batch_size=0', RUN), 1, 'optim.batch_size=0'),
  Case('zero epochs', (*TRAIN, '--config.optim.num_epochs=0', RUN), 1, 'optim.num_epochs=0'),
  Case('negative rate', (*TRAIN, '--config.optim.learning_rate=-1', RUN), 1, 'learning_rate'),
  Case('smoothing over 1', (*TRAIN, '--config.optim.label_smoothing=1.5', RUN), 1, 'smoothing'),
  Case(
    'unknown schedule',
    (*TRAIN, '--config.optim.schedule=linear', RUN),
    1,
    'one of constant, cosine',
  ),
  Case('unknown placement', (*TRAIN, '--config.run.placement=gpu', RUN), 1, 'run.placement'),
  Case('unknown model', (*TRAIN, '--config.model=transformer', RUN), 1, 'one of mlp, cnn'),
  Case('keep no checkpoints', (*TRAIN, '--config.run.keep_checkpoints=0', RUN), 1, 'keep_check'),
  Case(
    'validation fraction 0', (*TRAIN, '--config.data.validation_fraction=0', RUN), 1, 'fraction'
  ),
  Case(
    'validation fraction over 1',
    (*TRAIN, '--config.data.validation_fraction=1.5', RUN),
    1,
    'data.validation_fraction',
  ),
  # Values that pass validation but cannot work.
  Case(
    'validation takes every example',
    (*TRAIN, '--config.data.validation_fraction=0.9999999', RUN),
    1,
    'leaves no training examples',
  ),
  Case(
    'validation takes no example',
    (*TRAIN, '--config.data.validation_fraction=0.0001', RUN),
    1,
    'leaves no validation examples',
  ),
  Case('huge batch', (*TRAIN, '--config.optim.batch_size=1000000000', RUN), 1, 'use at most'),
  Case(
    'huge eval batch',
    (*TRAIN, '--config.run.eval_batch_size=1000000000', RUN),
    1,
    'run.eval_batch_size=1000000000 needs',
  ),
  Case(
    'huge layers',
    (*TRAIN, '--config.mlp.hidden_sizes=100000000,100000000', RUN),
    1,
    'use smaller layers',
  ),
  Case(
    'cosine warm-up as long as the run',
    (*TRAIN, '--config.optim.schedule=cosine', '--config.optim.warmup_epochs=1', RUN),
    1,
    'expected below optim.num_epochs',
  ),
  Case('warm-up past the end', (*TRAIN, '--config.optim.warmup_epochs=3', RUN), 1, 'at most'),
  Case(
    'benchmark batch size 0',
    ('--mode=benchmark', '{data}', '--config.benchmark.batch_sizes=0,100'),
    1,
    'is not a batch size',
  ),
  Case(
    'benchmark batch size negative',
    ('--mode=benchmark', '{data}', '--config.benchmark.batch_sizes=-5,10'),
    1,
    'is not a batch size',
  ),
  Case(
    'benchmark huge batch',
    ('--mode=benchmark', '{data}', '--config.benchmark.batch_sizes=10,2000000000'),
    1,
    'benchmark.batch_sizes=2000000000 needs',
  ),
  # Workdirs.
  Case('train workdir is a file', (*TRAIN, RUN), 1, 'is a file', setup=_file('run')),
  Case(
    'train workdir under a file',
    (*TRAIN, '--workdir={dir}/file/run'),
    1,
    'Cannot create',
    setup=_file('file'),
  ),
  Case(
    'benchmark workdir is a file',
    ('--mode=benchmark', '{data}', '--config.benchmark.batch_sizes=10,20', RUN),
    1,
    'is a file',
    ('run',),
    _file('run', 'keep'),
  ),
  Case(
    'sweep workdir is a file',
    ('--mode=sweep', '{sweep}', RUN),
    1,
    'is a file',
    ('run',),
    _file('run', 'keep'),
  ),
  Case(
    'sweep without a sweep', ('--mode=sweep', '{data}', RUN), 1, 'needs sweep.grid or sweep.random'
  ),
  Case('lock is a directory', (*TRAIN, RUN), 1, 'lock file', setup=_directory('run/.lock')),
  Case(
    'metrics.jsonl is a directory',
    (*TRAIN, '--config.optim.num_epochs=2', RUN),
    1,
    'metrics.jsonl: Is a directory',
    (CONFIG,),
    _trained(_as_directory(reporting.METRICS_FILE)),
  ),
  Case(
    'cache dir is a file',
    (*TRAIN, '--config.run.cache_dir={dir}/cache', RUN),
    1,
    'run.cache_dir',
    setup=_file('cache', 'not a directory'),
  ),
  Case('train in use', (*TRAIN, RUN), 1, 'in use by a run of pid 4242', setup=_held_lock('run')),
  Case(
    'benchmark in use',
    ('--mode=benchmark', '{data}', '--config.benchmark.batch_sizes=10,20', RUN),
    1,
    'in use by a run of pid 4242',
    setup=_held_lock('run'),
  ),
  Case('sweep in use', ('--mode=sweep', '{sweep}', RUN), 1, 'in use', setup=_held_lock('run')),
  # Resuming.
  Case(
    'fewer epochs than the checkpoint',
    (*TRAIN, '--config.optim.num_epochs=1', RUN),
    1,
    'past optim.num_epochs=1 (epoch 2 done)',
    (CONFIG, 'run/metrics.jsonl'),
    _trained(),
  ),
  Case(
    'another model in the workdir',
    (*TRAIN, '--config.mlp.hidden_sizes=32', '--config.optim.num_epochs=2', RUN),
    1,
    'holds a run with another config',
    (CONFIG, 'run/metrics.jsonl'),
    _trained(),
  ),
  Case(
    'cosine changes length on resume',
    (*TRAIN, '--config.optim.schedule=cosine', '--config.optim.num_epochs=3', RUN),
    1,
    'holds a run with another config',
    (CONFIG,),
    _trained(),
  ),
  # Reading a run: eval, predict, export, serve.
  Case('eval of nothing', ('--mode=eval', RUN), 1, 'does not exist; train into'),
  Case('config.json not JSON', ('--mode=eval', RUN), 1, 'not valid JSON', setup=_file(CONFIG, '{')),
  Case('config.json a list', ('--mode=eval', RUN), 1, 'not a config', setup=_file(CONFIG, '[]')),
  Case(
    'config.json negative batch',
    ('--mode=eval', RUN),
    1,
    'optim.batch_size=-5',
    (CONFIG,),
    _trained(_edit_config(**{'optim.batch_size': -5})),
  ),
  Case(
    'config.json text layers',
    ('--mode=eval', RUN),
    1,
    'mlp.hidden_sizes',
    (CONFIG,),
    _trained(_edit_config(**{'mlp.hidden_sizes': 'abc'})),
  ),
  Case(
    'config.json string batch',
    ('--mode=eval', RUN),
    1,
    'optim.batch_size',
    (CONFIG,),
    _trained(_edit_config(**{'optim.batch_size': '100'})),
  ),
  Case(
    'config.json unknown field',
    ('--mode=eval', RUN),
    0,
    'ignoring optim.speed',
    (CONFIG,),
    _trained(_edit_config(**{'optim.speed': 1})),
  ),
  Case(
    'config.json without a field added since',  # Read silently: no line at all.
    ('--mode=eval', RUN),
    0,
    '',
    (CONFIG,),
    _trained(_drop_fields('run.keep_checkpoints')),
  ),
  Case(
    'config.json without a field that changes results',
    ('--mode=eval', RUN),
    1,
    'has no optim.label_smoothing',
    (CONFIG,),
    _trained(_drop_fields('optim.label_smoothing')),
  ),
  Case(
    'config.json huge eval batch',
    ('--mode=eval', RUN),
    1,
    'run.eval_batch_size=1000000000',
    (CONFIG,),
    _trained(_edit_config(**{'run.eval_batch_size': 1000000000})),
  ),
  Case(
    'config.json validation fraction 1',
    ('--mode=eval', RUN),
    1,
    'data.validation_fraction',
    (CONFIG,),
    _trained(_edit_config(**{'data.validation_fraction': 1.0})),
  ),
  Case(
    'eval of a CNN run without checkpoints',
    ('--mode=eval', RUN),
    1,
    '--config.model=cnn',
    (CONFIG,),
    _cnn_without_checkpoint,
  ),
  Case(
    'latest checkpoint damaged',
    ('--mode=eval', RUN),
    0,
    'cannot be read',
    ('run/checkpoints',),
    _trained(_damage_steps(slice(-1, None))),
  ),
  Case(
    'latest array metadata damaged',
    ('--mode=eval', RUN),
    0,
    'cannot be read',
    ('run/checkpoints',),
    _trained(_damage_files('state/array_metadatas/*')),
  ),
  Case(
    'latest OCDBT manifest damaged',
    ('--mode=eval', RUN),
    0,
    'cannot be read',
    ('run/checkpoints',),
    _trained(_damage_files('state/manifest.ocdbt')),
  ),
  Case(
    'latest array data damaged',
    ('--mode=eval', RUN),
    0,
    'cannot be read',
    ('run/checkpoints',),
    _trained(_damage_files('state/ocdbt.process_0/d/*')),
  ),
  Case(
    'latest checkpoint metadata damaged, resumed',
    (*TRAIN, '--config.optim.num_epochs=2', RUN),
    0,
    'Set unreadable checkpoints aside',
    (CONFIG,),
    _trained(_damage_files('_CHECKPOINT_METADATA')),
  ),
  Case(
    'latest checkpoint emptied',
    ('--mode=eval', RUN),
    0,
    'cannot be read',
    ('run/checkpoints',),
    _trained(lambda run: [p.unlink() for p in step_dirs(run)[-1].rglob('*') if p.is_file()]),
  ),
  Case(
    'every checkpoint damaged',
    ('--mode=eval', RUN),
    1,
    'nor any before it',
    ('run/checkpoints',),
    _trained(_damage_steps(slice(None))),
  ),
  Case(
    'old checkpoint format',
    ('--mode=eval', RUN),
    1,
    'format version 1',
    ('run/checkpoints',),
    _trained(_set_format_version),
  ),
  Case(
    'export target is a directory',
    ('--mode=export', RUN, '--export_file={dir}/out'),
    1,
    'is a directory',
    setup=lambda d: (_trained()(d), _directory('out')(d)),
  ),
  Case(
    'export would overwrite',
    ('--mode=export', RUN, '--export_file={dir}/model.jax'),
    1,
    'add --overwrite',
    ('model.jax',),
    lambda d: (_trained()(d), _file('model.jax', 'keep')(d)),
  ),
  Case(
    'export into the run',
    ('--mode=export', RUN, '--export_file={dir}/run/model.jax'),
    1,
    'inside the run directory',
    ('run',),
    _trained(),
  ),
  Case(
    'export under a file',
    ('--mode=export', RUN, '--export_file={dir}/file/model.jax'),
    1,
    'Cannot write',
    ('file',),
    lambda d: (_trained()(d), _file('file', 'keep')(d)),
  ),
  Case('predict without images', ('--mode=predict', RUN), 1, 'needs --image', setup=_trained()),
  Case(
    'predict a LAB TIFF',
    ('--mode=predict', RUN, '--image={dir}/lab.tif'),
    1,
    'lab.tif',
    setup=lambda d: (_trained()(d), _lab_tiff(d)),
  ),
  Case(
    'predict a missing image',
    ('--mode=predict', RUN, '--image={dir}/none.png'),
    1,
    'none.png',
    setup=_trained(),
  ),
  Case('serve with an export flag', ('--mode=serve', RUN, '--overwrite'), 1, 'a flag of'),
  Case('eval with a distributed flag', ('--mode=eval', RUN, '--num_processes=2'), 1, 'a flag of'),
  Case(
    'a run named by its overrides',
    (*TRAIN, '--config.optim.learning_rate=0.002'),
    0,
    '',
    creates='runs/default-mlp.hidden_sizes=16-optim.batch_size=20-optim.learning_rate=0.002-*',
  ),
  Case(
    'failed start in a new default workdir',
    (*TRAIN, '--config.data.validation_fraction=0.9999999'),
    1,
    'leaves no training examples',
  ),
  Case(
    'a prepared copy without its data files',
    (*TRAIN, '--config.data.dir={dir}/tfds', '--config.run.cache_dir={dir}/cache', RUN),
    1,
    'cannot be read',
    setup=lambda d: prepare_mock(d / 'tfds', 'mnist'),
  ),
  Case(
    'no data anywhere',
    (*TRAIN, '--config.data.dir={dir}/none', '--config.run.cache_dir={dir}/cache', RUN),
    1,
    "No prepared 'mnist' dataset",
  ),
  # Checked readers: a checkpoint whose metadata breaks its shape is set aside.
  Case(
    'checkpoint meta without format_version',
    (*TRAIN, '--config.optim.num_epochs=2', RUN),
    0,
    'Set unreadable checkpoints aside',
    setup=_trained(_edit_latest_meta(format_version=None)),
  ),
  Case(
    'checkpoint meta with a negative epoch',
    (*TRAIN, '--config.optim.num_epochs=2', RUN),
    0,
    'Set unreadable checkpoints aside',
    setup=_trained(_edit_latest_meta(epoch=-1)),
  ),
  Case(
    'tensorboard is a file',
    (*TRAIN, '--config.optim.num_epochs=3', RUN),
    1,
    'tensorboard is a file',
    (CONFIG, 'run/metrics.jsonl'),
    _trained(_as_file('tensorboard')),
  ),
  # A workdir is a run's or nobody's.
  Case(
    'workdir of other files',
    (*TRAIN, RUN),
    1,
    'it is not a run of this code',
    ('run',),
    _file('run/metrics.jsonl', '{"mine": 1}\n'),
  ),
  Case(
    'checkpoints is a file',
    (*TRAIN, '--config.optim.num_epochs=3', RUN),
    1,
    'is not a directory, where this run keeps its checkpoints',
    (CONFIG, 'run/metrics.jsonl'),
    _trained(_as_file('checkpoints')),
  ),
  Case(
    'finished run again with another eval batch size',
    (*TRAIN, '--config.optim.num_epochs=2', '--config.run.eval_batch_size=3', RUN),
    0,
    '',  # Its one line is INFO, which the driver does not show.
    ('run/metrics.jsonl',),
    _trained(),
  ),
  Case(
    "export keeps the user's <file>.tmp",
    ('--mode=export', RUN, '--export_file={dir}/out.jax'),
    0,
    '',
    ('out.jax.tmp',),
    lambda d: [_trained()(d), _file('out.jax.tmp', 'mine')(d)],
  ),
  # Values checked where they are declared; a study's fields given once.
  Case(
    'config field given twice',
    (*TRAIN, '--config.mlp.hidden_sizes=32', '--config.mlp.hidden_sizes=64', RUN),
    1,
    '--config.mlp.hidden_sizes is given 2 times',
  ),
  Case(
    'get_config returns no ConfigDict',
    ('--config={dir}/c.py', RUN),
    1,
    'get_config() returned 5, not an ml_collections.ConfigDict',
    setup=_file('c.py', 'def get_config():\n  return 5\n'),
  ),
  Case(
    'config file without get_config',
    ('--config={dir}/c.py', RUN),
    1,
    'the file defines no get_config()',
    setup=_file('c.py', 'x = 1\n'),
  ),
  Case(
    'coordinator address not host:port',
    (*TRAIN, '--coordinator_address=not_an_address', RUN),
    1,
    "'not_an_address' (--coordinator_address or JAX_COORDINATOR_ADDRESS) is not host:port",
  ),
]


def _expand(args: tuple[str, ...], directory: Path, data: list[str]) -> list[str]:
  """The case's arguments; where the case sets a field of the data flags, its value counts."""
  data = without(data, [a.format(dir=directory) for a in args if a.startswith('--config.')])
  expanded = []
  for arg in args:
    if arg == '{data}':
      expanded += data
    elif arg == '{sweep}':
      sweep = overridden(data[1:], '--config.optim.num_epochs=2')
      expanded += [f'--config={ROOT}/configs/sweep.py', *sweep]
    else:
      expanded.append(arg.format(dir=directory))
  return expanded


def _fingerprint(path: Path) -> dict[str, bytes | None]:
  """Every file's bytes under path (None: absent), to compare before and after."""
  if not path.exists():
    return {str(path): None}
  files = [path] if path.is_file() else sorted(p for p in path.rglob('*') if p.is_file())
  return {str(p): p.read_bytes() for p in files}


@contextlib.contextmanager
def _captured(directory: Path) -> Iterator[tuple[Path, Path]]:
  """Points file descriptors 1 and 2 at files for the with-block, as a subprocess's would be."""
  out, err = directory / 'stdout.txt', directory / 'stderr.txt'
  sys.stdout.flush()
  sys.stderr.flush()
  saved = os.dup(1), os.dup(2)
  with open(out, 'wb') as out_file, open(err, 'wb') as err_file:
    os.dup2(out_file.fileno(), 1)
    os.dup2(err_file.fileno(), 2)
    try:
      yield out, err
    finally:
      gc.collect()  # Unraisable errors print now, into this case's stderr.
      sys.stdout.flush()
      sys.stderr.flush()
      os.dup2(saved[0], 1)
      os.dup2(saved[1], 2)


def _run_main_here(argv: list[str]) -> int:
  """main.py's start in this process: parse the flags afresh, run, return the exit status."""
  import main

  flags.FLAGS.unparse_flags()
  for name in [n for n in flags.FLAGS if n.startswith('config.')]:  # config_flags adds them anew.
    delattr(flags.FLAGS, name)
  stopping.received.clear()
  sys.modules.pop('config_config', None)  # ml_collections' name for every config file it runs.
  sys.argv = ['main.py', *argv]
  try:
    main.main(main.parse_flags(sys.argv))
  except SystemExit as exit:
    return exit.code or 0
  except BaseException:
    traceback.print_exc()
    return -1
  return 0


def drive(root: Path, names: list[str]) -> dict[str, dict]:
  """Runs the named cases in this process; per case its status, stderr and changed files."""
  from absl import logging as absl_logging

  absl_logging.use_absl_handler()
  stopping.exit_on_signals()
  os.chdir(root)
  data = overridden(
    cached_mock_splits(root),
    '--config.optim.batch_size=20',
    '--config.run.steps_per_call=0',
    '--config.optim.num_epochs=1',
  )
  with _captured(root):
    trained = _run_main_here(
      [*overridden(data, '--config.optim.num_epochs=2'), f'--workdir={root}/trained']
    )
  assert trained == 0, (root / 'stderr.txt').read_text()
  results = {}
  for case in (c for c in CASES if c.name in names):
    directory = root / re.sub(r'\W+', '-', case.name)
    directory.mkdir()
    os.chdir(directory)  # Where runs/ goes for a train without --workdir.
    if case.setup is not None:
      case.setup(directory)
    before = {k: v for p in case.unchanged for k, v in _fingerprint(directory / p).items()}
    start = time.perf_counter()
    with _captured(directory) as (out, err):
      status = _run_main_here(_expand(case.args, directory, data))
    after = {k: v for p in case.unchanged for k, v in _fingerprint(directory / p).items()}
    while _HELD:
      os.close(_HELD.pop())
    results[case.name] = {
      'status': status,
      'stderr': err.read_text(errors='replace'),
      'stdout': out.read_text(errors='replace'),
      'changed': sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k)),
      'runs_dir': (directory / 'runs').exists(),
      'created': [str(p) for p in directory.glob(case.creates)] if case.creates else [],
      'seconds': time.perf_counter() - start,
    }
  return results


@pytest.fixture(scope='module')
def table_results(tmp_path_factory) -> dict[str, dict]:
  """Every case of CASES, run once by one driver subprocess."""
  root = tmp_path_factory.mktemp('faults')
  out = root / 'results.json'
  env = {**os.environ, 'PYTHONPATH': str(ROOT), 'JAX_PLATFORMS': 'cpu'}
  done = subprocess.run(
    [sys.executable, __file__, str(root), str(out)],
    capture_output=True,
    text=True,
    timeout=1200,
    env=env,
    cwd=ROOT,
  )
  assert done.returncode == 0, done.stderr[-5000:]
  return {**json.loads(out.read_text()), '__root__': str(root)}


def problems(result: dict, case: Case) -> list[str]:
  """What is wrong with a case's outcome: status, message, tracebacks, changed files."""
  found = []
  stderr = result['stderr']
  if result['status'] != case.status:
    found.append(f'exit {result["status"]}, expected {case.status}')
  if case.message not in stderr + result.get('stdout', ''):
    found.append(f'no {case.message!r} in the output')
  found += [f'{stderr.count(m)} x {m!r}' for m in ('Traceback', 'Exception ignored') if m in stderr]
  if 'Fatal Python error' in stderr:
    found.append('a fatal error')
  found += [f'{path} changed' for path in result['changed']]
  if case.creates and not result['created']:
    found.append(f'nothing matches {case.creates}')
  if result['runs_dir'] and case.status:
    found.append('a failed start left a runs/ directory behind')
  if len([x for x in stderr.splitlines() if x.startswith(('E', 'F'))]) > 1:
    found.append('more than one error line')
  return found


@pytest.mark.parametrize('case', CASES, ids=[c.name for c in CASES])
def test_fault_table(table_results, case):
  result = table_results[case.name]
  assert not problems(result, case), f'{problems(result, case)}\n{result["stderr"][-3000:]}'


if __name__ == '__main__':
  root, out = Path(sys.argv[1]), Path(sys.argv[2])
  out.write_text(json.dumps(drive(root, [c.name for c in CASES])))


@dataclasses.dataclass(frozen=True)
class SignalCase:
  """Signals sent to a main.py process once `ready(directory)` holds, `gap` seconds apart."""

  name: str
  args: tuple[str, ...]
  signals: tuple[int, ...]
  status: int
  message: str
  ready: Callable[[Path], bool] = lambda directory: True
  delay: float = 0.0
  gap: float = 0.2
  setup: Callable[[Path], None] | None = None


def _saved_a_checkpoint(directory: Path) -> bool:
  return bool(step_dirs(directory / 'run'))


def _started_training(directory: Path) -> bool:
  return (directory / 'run' / run_config.CONFIG_FILE).exists()


SLEEPY_CONFIG = _file('slow.py', 'import time\n\ndef get_config():\n  time.sleep(60)\n')
LONG = (*TRAIN, '--config.optim.num_epochs=200', RUN)
SIGNAL_CASES = [
  SignalCase('SIGINT at start-up', TRAIN, (signal.SIGINT,), 130, 'Stopped by SIGINT', delay=1.0),
  SignalCase('SIGTERM at start-up', TRAIN, (signal.SIGTERM,), 143, 'Stopped by SIGTERM', delay=1),
  SignalCase(
    'SIGINT while the config file runs',
    ('--config={dir}/slow.py',),
    (signal.SIGINT,),
    130,
    'Stopped by SIGINT',
    delay=2.0,
    setup=SLEEPY_CONFIG,
  ),
  SignalCase(
    'SIGTERM while the config file runs',
    ('--config={dir}/slow.py',),
    (signal.SIGTERM,),
    143,
    'Stopped by SIGTERM',
    delay=2.0,
    setup=SLEEPY_CONFIG,
  ),
  SignalCase(
    'three signals during a one-call epoch of seconds',
    (
      *LONG,
      '--config.mlp.hidden_sizes=4096,4096',
      '--config.optim.batch_size=4',
      '--config.run.steps_per_call=100000',  # The whole epoch in one call, whatever pacing says.
    ),
    # Signals that arrive during one device call are handled after it in signal-number order
    # (SIGINT, 2, before SIGTERM, 15), so the first sent is SIGINT, for a status that is sure.
    (signal.SIGINT, signal.SIGTERM, signal.SIGINT),
    130,
    'to resume',
    _saved_a_checkpoint,
  ),
  SignalCase(
    'Ctrl-C five times in training',
    LONG,
    (signal.SIGINT,) * 5,
    130,
    'to resume',
    _saved_a_checkpoint,
    gap=0.05,
  ),
  SignalCase(  # config.json is written before the data loads: nothing to save yet.
    'SIGTERM as training starts ends it at once',
    (*TRAIN, RUN),
    (signal.SIGTERM,),
    143,
    'Stopped by SIGTERM; checkpoints written so far are kept',
    _started_training,
  ),
]


def _run_with_signals(case: SignalCase, directory: Path, data: list[str]):
  command = [sys.executable, str(ROOT / 'main.py'), *_expand(case.args, directory, data)]
  process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=directory)
  deadline = time.time() + 120
  while not case.ready(directory) and process.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  time.sleep(case.delay)
  for signum in case.signals:
    process.send_signal(signum)
    time.sleep(case.gap)
  _, stderr = process.communicate(timeout=120)
  return process.returncode, stderr


@pytest.mark.parametrize('case', SIGNAL_CASES, ids=[c.name for c in SIGNAL_CASES])
def test_signal_table(tmp_path, case):
  data = overridden(
    cached_mock_splits(tmp_path), '--config.run.steps_per_call=0', '--config.optim.num_epochs=1'
  )
  if case.setup is not None:
    case.setup(tmp_path)
  status, stderr = _run_with_signals(case, tmp_path, data)
  result = {'status': status, 'stderr': stderr, 'changed': [], 'runs_dir': False}
  found = problems(result, Case(case.name, case.args, case.status, case.message))
  assert not found, f'{found}\n{stderr[-3000:]}'
  assert not list(tmp_path.glob('run/checkpoints/*tmp*'))


def test_predict_fails_when_its_answers_cannot_be_written(tmp_path, table_results):
  """Closed stdout and a full disk: exit 1 and one line, never a silent 0."""
  trained = Path(table_results['__root__']) / 'trained'
  image = tmp_path / 'digit.png'
  Image.fromarray(np.pad(np.full((12, 4), 255, np.uint8), 8)).save(image)
  command = [sys.executable, str(ROOT / 'main.py'), '--mode=predict', f'--workdir={trained}']
  command += [f'--image={image}', '--output=json']  # An answer or a refusal: a line either way.
  closed = subprocess.run(
    command, stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.close(1)
  )
  with open('/dev/full', 'w') as full:
    filled = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True)
  for done, message in ((closed, 'stdout is closed'), (filled, 'Cannot write the answers')):
    # The tiny model may refuse the digit, in a line of its own: the answer, not a fault.
    lines = done.stderr.splitlines(True)
    stderr = ''.join(line for line in lines if 'no digit found' not in line)
    result = {'status': done.returncode, 'stderr': stderr, 'changed': [], 'runs_dir': False}
    found = problems(result, Case('predict', (), 1, message))
    assert not found, f'{found}\n{done.stderr[-3000:]}'


def _post(port: int, body: bytes, length: int | None = None, close: bool = False) -> bytes:
  """A raw POST of an image (cut short when length exceeds the body); the answer's bytes."""
  client = socket.create_connection(('127.0.0.1', port))
  client.sendall(
    b'POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/tiff\r\n'
    + f'Content-Length: {length or len(body)}\r\nConnection: close\r\n\r\n'.encode()
    + body
  )
  if close:
    client.close()
    return b''
  answer = client.recv(65536)
  client.close()
  return answer


def test_serve_faults_and_a_stop_within_3_s_whatever_clients_do(table_results, tmp_path):
  """On a run whose metrics.jsonl holds an odd line: 400 for a LAB TIFF, one line per client
  gone mid-upload, and SIGTERM with an upload half sent ends it within 3 s with 143, the
  client told why in JSON, without tracebacks."""
  run = tmp_path / 'run'
  shutil.copytree(Path(table_results['__root__']) / 'trained', run)
  with (run / reporting.METRICS_FILE).open('a') as metrics:
    metrics.write('[1, 2]\n"text"\n{"test_accuracy": "high"}\n')
  command = [sys.executable, str(ROOT / 'main.py'), '--mode=serve', f'--workdir={run}']
  process = subprocess.Popen([*command, '--port=0'], stderr=subprocess.PIPE, text=True)
  port = None
  while port is None:
    line = process.stderr.readline()
    assert line, 'serve ended before it served'
    found = re.search(r'Serving .* on http://127\.0\.0\.1:(\d+)/', line)
    port = found and int(found.group(1))
  lab = io.BytesIO()
  Image.new('LAB', (40, 40)).save(lab, 'TIFF')
  assert _post(port, lab.getvalue()).startswith(b'HTTP/1.1 400')
  for _ in range(3):
    _post(port, b'II*\x00', length=5000, close=True)
  stalled = socket.create_connection(('127.0.0.1', port))
  stalled.sendall(
    b'POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n'
    b'Content-Length: 100000\r\n\r\n' + b'\x89PNG' * 10
  )
  time.sleep(0.5)
  start = time.perf_counter()
  process.send_signal(signal.SIGTERM)
  rest = process.communicate(timeout=30)[1]
  assert time.perf_counter() - start < 3
  stalled.settimeout(5)
  answer = stalled.recv(65536)
  stalled.close()
  assert answer.startswith(b'HTTP/1.1 503') and b'"error":"the server is stopping' in answer
  assert process.returncode == 143
  assert 'Traceback' not in rest and 'Exception ignored' not in rest
  assert len(re.findall(r'POST /api/predict 499 ', rest)) == 3, rest


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
  """A 3 MB file system (tmpfs), to fill; mounting needs root, so elsewhere the test skips."""
  mount = tmp_path / 'small'
  mount.mkdir()
  done = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=3m', 'tmpfs', str(mount)], check=False)
  if done.returncode:
    pytest.skip('mounting a small tmpfs needs root')
  yield mount
  subprocess.run(['umount', str(mount)], check=True)


@pytest.mark.parametrize(
  ('where', 'flags', 'message'),
  [
    ('workdir', ['--config.mlp.hidden_sizes=512,512'], 'Writing a checkpoint in'),
    ('cache', ['--config.run.cache_dir={disk}/cache'], 'Cannot write the data cache'),
    ('read-only', [], 'Read-only file system'),
  ],
)
def test_a_full_disk_is_one_line_and_leaves_no_partial_files(
  tmp_path, small_disk, where, flags, message, request
):
  data = cached_mock_splits(tmp_path, num_examples=2000)[:-2]
  if where == 'cache':  # Decoding the array_record copy into a cache on the small disk.
    copy = request.getfixturevalue('array_record_dir')
    data = [a for a in data if not a.startswith(('--config.run.cache_dir', '--config.data.dir'))]
    data.append(f'--config.data.dir={copy}')
  if where == 'read-only':
    subprocess.run(['mount', '-o', 'remount,ro', str(small_disk)], check=True)
  args = overridden(
    data, '--config.optim.batch_size=20', *(f.format(disk=small_disk) for f in flags)
  )
  result = run_main(*args, f'--workdir={small_disk}/run')
  found = problems(
    {'status': result.returncode, 'stderr': result.stderr, 'changed': [], 'runs_dir': False},
    Case(where, (), 1, message),
  )
  assert not found, f'{found}\n{result.stderr[-3000:]}'
  assert not [p for p in small_disk.rglob('*') if 'tmp' in p.name]


def test_positions_count_epochs_from_1_as_the_stop_message_does():
  assert str(checkpoint.Position(4, 50, {'loss': 1.0})) == 'epoch 4 done, 50 steps into epoch 5'
  assert str(checkpoint.Position(2)) == 'epoch 2 done'
  assert checkpoint.Position(1, 30).past(1) and not checkpoint.Position(1).past(1)


def test_machine_faults_become_one_line_and_bugs_do_not():
  full = OSError(errno.ENOSPC, 'No space left on device', '/data/run/x.png')
  assert str(faults.translate(full)).startswith('/data/run/x.png: No space left on device; free')
  try:
    try:
      raise OSError(errno.EROFS, 'Read-only file system', '/ro/run')
    except OSError as error:
      raise ValueError('orbax wrapped it') from error
  except ValueError as wrapped:
    assert 'writable disk' in str(faults.translate(wrapped))
  exhausted = RuntimeError('RESOURCE_EXHAUSTED: Out of memory allocating 4.0T bytes')
  assert 'optim.batch_size' in str(faults.translate(exhausted))
  assert faults.translate(KeyError('a bug')) is None


# Checked readers (mlp/machinery/checked.py): every file the project reads declares its shape.
# Each case breaks one declared field in type, range or presence, generated from the
# declaration, so a field added to a shape adds its cases.

MISSING = object()


def _out_of_range(shape: checked.Value, value) -> list[tuple[str, object]]:
  """Values of the right type that break shape's range or size."""
  found = []
  if shape.kind in (int, float):
    found += [('below', shape.low - 1)] if shape.low is not None else []
    found += [('above', shape.high + 1)] if shape.high is not None else []
    found += [('nan', math.nan), ('inf', math.inf)] if shape.kind is float and shape.finite else []
  if shape.kind in (list, str) and shape.min_items:
    found.append(('too short', value[: shape.min_items - 1]))
  if shape.kind is list and shape.max_items is not None:
    found.append(('too long', value + value[:1]))
  if shape.kind is np.ndarray:
    found += [('dtype', value.astype(np.float64)), ('ndim', value[..., None])]
  return found


def _wrong_kind(shape: checked.Value):
  return {int: 'x', float: 'x', str: 5, bool: 'x', list: {'a': 1}, dict: [1]}.get(shape.kind, [1])


def broken(shape: checked.Value, value, field: str = '', path: tuple = ()) -> Iterator[tuple]:
  """(case, field, path, bad value): one declared field of value broken at a time; field is
  named as checked.Mismatch names it."""
  where = field or 'the whole file'
  yield f'{where}: wrong type', where, path, _wrong_kind(shape)
  for what, bad in _out_of_range(shape, value):
    yield f'{where}: {what}', where, path, bad
  prefix = f'{field}.' if field else ''
  if shape.kind is dict:
    for key, declared in (shape.fields or {}).items():
      if not declared.optional:
        yield f'{prefix}{key}: missing', prefix + key, (*path, key), MISSING
      yield from broken(declared, value[key], prefix + key, (*path, key))
    if shape.items is not None:
      key = next(iter(value))
      yield from broken(shape.items, value[key], prefix + key, (*path, key))
  if shape.kind is list and shape.items is not None:
    yield from broken(shape.items, value[0], f'{field}[0]', (*path, 0))


def replaced(document, path: tuple, bad):
  """A copy of document with the value at path replaced by bad (or removed: MISSING)."""
  if not path:
    return bad
  document = copy.deepcopy(document)
  *parents, last = path
  inner = functools.reduce(operator.getitem, parents, document)
  if bad is MISSING:
    del inner[last]
  else:
    inner[last] = bad
  return document


def cases_of(shape: checked.Value, valid) -> list:
  return [
    pytest.param(path, bad, field, id=case) for case, field, path, bad in broken(shape, valid)
  ]


VALID_META = {
  'format_version': checkpoint.FORMAT_VERSION,
  'epoch': 1,
  'epoch_steps': 3,
  'epoch_sums': {'loss': 1.5},
}
VALID_INFO = {
  'name': 'mnist',
  'image_shape': [28, 28, 1],
  'class_names': list(input_pipeline.DIGITS),
}
VALID_PACING = {'one_step_seconds': 0.01, 'scanned_step_seconds': 0.002}
VALID_CACHE = {
  'images': np.zeros((5, 4, 4, 1), np.uint8),
  'labels': np.arange(5, dtype=np.int32),
  'class_names': np.array(input_pipeline.DIGITS),
}
VALID_RECORD = {'train_loss': 0.5, 'step': 12, 'epoch': 2, 'val_accuracy': 0.9}


def test_every_shape_is_met_by_what_this_code_writes():
  """The valid documents the cases break are valid, so each case breaks exactly one thing."""
  checkpoint.position_of(VALID_META, Path('step'))
  checked.check(VALID_INFO, input_pipeline.INFO_SHAPE)
  checked.check({'key': VALID_PACING}, pacing.CACHE_SHAPE)
  input_pipeline._checked_cache(VALID_CACHE)
  checked.check(VALID_RECORD, reporting.RECORD_SHAPE)


@pytest.mark.parametrize(('path', 'bad', 'field'), cases_of(checkpoint.META_SHAPE, VALID_META))
def test_checkpoint_meta_that_breaks_its_shape_is_damaged_or_of_other_code(path, bad, field):
  """Damaged (ValueError): restore sets the checkpoint aside and uses the one before it.
  A whole number of another version is another code's checkpoint: a UserError."""
  with pytest.raises((ValueError, UserError)) as raised:
    checkpoint.position_of(replaced(VALID_META, path, bad), Path('checkpoints/6'))
  if isinstance(raised.value, UserError):
    assert 'format version' in str(raised.value) and field == 'format_version'
  else:
    assert field in str(raised.value) and '\n' not in str(raised.value)


@pytest.mark.parametrize(('path', 'bad', 'field'), cases_of(input_pipeline.INFO_SHAPE, VALID_INFO))
def test_dataset_json_that_breaks_its_shape_is_one_line(tmp_path, path, bad, field):
  (tmp_path / input_pipeline.INFO_FILE).write_text(json.dumps(replaced(VALID_INFO, path, bad)))
  with pytest.raises(UserError) as raised:
    input_pipeline.DatasetInfo.load(tmp_path)
  message = str(raised.value)
  assert input_pipeline.INFO_FILE in message and field in message and '\n' not in message


PACING_CASES = cases_of(pacing.CACHE_SHAPE, {'key': VALID_PACING})


@pytest.mark.parametrize(('path', 'bad', 'field'), PACING_CASES)
def test_pacing_json_that_breaks_its_shape_is_measured_again(tmp_path, caplog, path, bad, field):
  config = tiny_config(tmp_path, {'run.steps_per_call': 0})
  key = pacing._key(config)
  cache = tmp_path / 'cache' / pacing.CACHE_FILE
  cache.parent.mkdir()
  broken_cache = replaced({key: VALID_PACING}, tuple(key if p == 'key' else p for p in path), bad)
  cache.write_text(json.dumps(broken_cache))
  timed = []

  def seconds_per_step(steps, limit):
    timed.append(steps)
    return 0.001

  assert pacing.steps_per_call(config, 10, seconds_per_step) >= 1
  assert timed, 'measured again'
  assert [r.levelname for r in caplog.records].count('WARNING') == 1
  assert pacing.CACHE_FILE in caplog.text and 'measuring the pacing again' in caplog.text
  checked.check(json.loads(cache.read_text()), pacing.CACHE_SHAPE)  # Rebuilt whole.


def test_a_pacing_json_that_is_a_directory_is_measured_and_not_cached(tmp_path, caplog):
  config = tiny_config(tmp_path, {'run.steps_per_call': 0})
  (tmp_path / 'cache' / pacing.CACHE_FILE).mkdir(parents=True)
  assert pacing.steps_per_call(config, 10, lambda steps, limit: 0.001) >= 1
  assert [r.levelname for r in caplog.records].count('WARNING') == 2  # Not read; not written.


@pytest.mark.parametrize(
  ('path', 'bad', 'field'),
  [
    *cases_of(input_pipeline.CACHE_SHAPE, VALID_CACHE),
    pytest.param(('labels',), np.array([0, 1, 2, 3, 10], np.int32), 'labels', id='label too big'),
    pytest.param(('labels',), np.array([-1, 1, 2, 3, 4], np.int32), 'labels', id='label < 0'),
    pytest.param(('labels',), np.arange(4, dtype=np.int32), 'labels', id='fewer labels'),
    pytest.param(('class_names',), np.array(['0']), 'class names', id='one class'),
    pytest.param(('images',), np.zeros((5, 0, 4, 1), np.uint8), 'images', id='empty image'),
  ],
)
def test_a_decoded_cache_that_breaks_its_shape_is_damaged(path, bad, field):
  """load_split decodes such a split again, with a warning (the next test)."""
  with pytest.raises((ValueError, KeyError)):
    input_pipeline._checked_cache(replaced(VALID_CACHE, path, bad))


def test_a_cache_with_labels_out_of_range_is_decoded_again(tmp_path, mock_mnist, caplog):
  config = tiny_config(tmp_path)
  input_pipeline.load_split('mnist', 'test', config.data.dir, config.run.cache_dir)
  cache = input_pipeline._cache_file('mnist', 'test', tmp_path / 'tfds', config.run.cache_dir)
  with np.load(cache) as stored:
    arrays = dict(stored)
  np.savez(cache, **{**arrays, 'labels': np.full_like(arrays['labels'], 10)})
  split = input_pipeline.load_split('mnist', 'test', config.data.dir, config.run.cache_dir)
  assert 0 <= split.labels.min() and split.labels.max() < 10
  assert 'decoding the split again' in caplog.text


@pytest.mark.parametrize(('path', 'bad', 'field'), cases_of(reporting.RECORD_SHAPE, VALID_RECORD))
def test_a_metrics_line_that_breaks_its_shape_is_dropped_with_those_after_it(
  tmp_path, caplog, path, bad, field
):
  first = {'train_loss': 0.7, 'step': 6, 'epoch': 1, 'val_accuracy': 0.8}
  lines = [first, replaced(VALID_RECORD, path, bad), {'test_loss': 0.4, 'test_accuracy': 0.9}]
  (tmp_path / reporting.METRICS_FILE).write_text(''.join(json.dumps(x) + '\n' for x in lines))
  assert reporting.read_records(tmp_path) == [first]
  assert reporting.read_results(tmp_path, 2) is None
  assert 'line 2 is damaged' in caplog.text


def test_whole_metrics_give_the_records_and_the_results_of_a_finished_run(tmp_path):
  lines = [{'step': 6, 'epoch': 1, 'train_loss': 0.7}, VALID_RECORD, {'test_loss': 0.4}]
  (tmp_path / reporting.METRICS_FILE).write_text(''.join(json.dumps(x) + '\n' for x in lines))
  assert reporting.read_records(tmp_path) == lines[:2]
  assert reporting.read_results(tmp_path, 2) == {'records': lines[:2], 'test_loss': 0.4}
  assert reporting.read_results(tmp_path, 3) is None


CONFIG_FIELDS = list(run_config.to_dict(configuration.defaults()))
NO_FIELDS_TYPE = {'of': 'no field'}  # No config field holds a dict.


@pytest.mark.parametrize(
  ('field', 'bad'),
  [
    *[pytest.param(path, NO_FIELDS_TYPE, id=f'{path}: wrong type') for path in CONFIG_FIELDS],
    pytest.param('model', MISSING, id='model: missing'),
    pytest.param('model', 5, id='model: wrong type'),
    pytest.param('', [1], id='the whole file: wrong type'),
  ],
)
def test_config_json_that_breaks_its_shape_is_one_line(tmp_path, field, bad):
  """config.json's fields are the schema's: a value of no field's type breaks every one."""
  import main

  values = run_config.to_dict(configuration.defaults())
  document = replaced(values, (field,) if field else (), bad)
  (tmp_path / run_config.CONFIG_FILE).write_text(json.dumps(document))
  with pytest.raises(UserError) as raised:
    main.load_saved(str(tmp_path))
  message = str(raised.value)
  assert run_config.CONFIG_FILE in message and (field or 'whole file') in message
  assert '\n' not in message


# A workdir is a run's or nobody's.


@pytest.mark.parametrize(
  ('names', 'refused'),
  [
    ((), False),
    ((lock.LOCK_FILE,), False),
    ((lock.LOCK_FILE, '.config.json.1a2b.tmp'), False),  # Process 0 of this run writing it.
    ((run_config.CONFIG_FILE, reporting.METRICS_FILE), False),
    ((reporting.METRICS_FILE, input_pipeline.INFO_FILE), True),
    (('notes.txt',), True),
    ((run_config.CONFIG_FILE, 'checkpoints'), True),  # checkpoints as a file.
  ],
)
def test_training_refuses_a_workdir_that_is_not_a_run_of_this_code(tmp_path, names, refused):
  for name in names:
    (tmp_path / name).write_text('mine')
  before = _fingerprint(tmp_path)
  with pytest.raises(UserError) if refused else contextlib.nullcontext() as raised:
    lock.refuse_foreign(tmp_path)
  if refused:
    assert '\n' not in str(raised.value) and str(tmp_path) in str(raised.value)
  assert _fingerprint(tmp_path) == before


@pytest.fixture
def trained_copy(tmp_path, mock_trained_workdir) -> Path:
  """A copy of the session's finished mock run (2 epochs)."""
  return Path(shutil.copytree(mock_trained_workdir, tmp_path / 'run'))


def test_a_run_whose_checkpoints_are_a_file_is_refused_untouched(
  trained_copy, mock_trained_workdir
):
  shutil.rmtree(trained_copy / checkpoint.CHECKPOINT_DIR)
  (trained_copy / checkpoint.CHECKPOINT_DIR).write_text('mine')
  before = _fingerprint(trained_copy)
  config = tiny_config(mock_trained_workdir.parent, {'optim.num_epochs': 3})
  with pytest.raises(UserError, match='is not a directory, where this run keeps its checkpoints'):
    train.train_and_evaluate(config, trained_copy)
  after = _fingerprint(trained_copy)
  assert {k: v for k, v in after.items() if not k.endswith(lock.LOCK_FILE)} == {
    k: v for k, v in before.items() if not k.endswith(lock.LOCK_FILE)
  }


def test_a_finished_run_run_again_keeps_its_results(trained_copy, mock_trained_workdir):
  metrics = (trained_copy / reporting.METRICS_FILE).read_bytes()
  config = tiny_config(
    mock_trained_workdir.parent, {'optim.num_epochs': 2, 'run.eval_batch_size': 3}
  )
  result = train.train_and_evaluate(config, trained_copy)
  assert (trained_copy / reporting.METRICS_FILE).read_bytes() == metrics
  *records, test = [json.loads(line) for line in metrics.decode().splitlines()]
  assert result == {'records': records, **{k: v for k, v in test.items() if k.startswith('test_')}}


def test_temporary_files_never_take_a_users_name(tmp_path):
  from mlp.machinery import files

  target = tmp_path / 'config.json'
  for name in ('config.json.tmp', '.config.json.tmp'):
    (tmp_path / name).write_text('mine')
  files.write_atomic(target, 'new')
  export._write_file(tmp_path / 'model.jax', b'model')
  assert target.read_text() == 'new' and (tmp_path / 'model.jax').read_bytes() == b'model'
  assert sorted(p.name for p in tmp_path.iterdir()) == [
    '.config.json.tmp',
    'config.json',
    'config.json.tmp',
    'model.jax',
  ]
  assert (tmp_path / 'config.json.tmp').read_text() == 'mine'


class _FakeBlob:
  """A bucket's lock object, as much of google-cloud-storage's Blob as the lease uses."""

  def __init__(self):
    self.name, self.generation, self.live = 'run/.lock', None, None
    self.bucket = self

  def upload_from_string(self, text, if_generation_match=None, **options):
    from google.api_core import exceptions

    if if_generation_match != (self.live or 0):
      raise exceptions.PreconditionFailed('generation')
    self.live = self.generation = (self.live or 0) + 1

  def get_blob(self, name, **options):
    return None if self.live is None else types.SimpleNamespace(generation=self.live)

  def delete(self, **options):
    self.live = None


@pytest.mark.parametrize('deleted', [True, False])
def test_a_bucket_lock_that_disappears_stops_its_holder(monkeypatch, deleted):
  blob = _FakeBlob()
  monkeypatch.setattr(lock.files, 'blob', lambda path: blob)
  monkeypatch.setattr(lock, 'CHECK_SECONDS', 0.01)
  stopped = []
  monkeypatch.setattr(lock, 'lost', stopped.append)
  lease = lock._Lease('gs://bucket/run/.lock')
  assert lease.take() == ''
  lease.hold()
  if deleted:
    blob.live = None  # Another hand deleted it; a second run could now take it.
  deadline = time.time() + 5
  while not stopped and time.time() < deadline:
    time.sleep(0.01)
  time.sleep(0.05)
  lease.release()
  assert stopped == (['run/.lock'] if deleted else [])


def test_a_lost_lock_ends_the_process_with_one_line():
  done = subprocess.run(
    [sys.executable, '-c', 'from mlp.machinery import lock; lock.lost("run/.lock")'],
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=120,
  )
  assert done.returncode == 1
  assert 'run/.lock of this run was deleted' in one_error_line(done)


# A study knows its base config; a flag is given once.


def test_a_study_refuses_a_worker_with_another_base_config(tmp_path):
  import optuna

  from mlp.tools import study

  search = {
    'study_name': 's1',
    'sampler': 'random',
    'pruner': 'none',
    'seed': 0,
    'max_parallel': 1,
    'num_random': 1,
    'grid': {'optim.learning_rate': [1e-3, 2e-3]},
    'random': {},
  }
  storage = optuna.storages.InMemoryStorage()
  base = tiny_config(tmp_path)
  listed = [{'optim.learning_rate': 1e-3}, {'optim.learning_rate': 2e-3}]
  study.open_study(search, listed, storage, study.base_fields(base, search))
  for same in ({'run.eval_batch_size': 5}, {'optim.learning_rate': 0.1}):  # Execution, searched.
    study.open_study(
      search, listed, storage, study.base_fields(tiny_config(tmp_path, same), search)
    )
  other = tiny_config(tmp_path, {'mlp.hidden_sizes': (64,), 'data.seed': 3})
  with pytest.raises(UserError, match=r'another base config \(data.seed: 0 there, 3 here; mlp'):
    study.open_study(search, listed, storage, study.base_fields(other, search))


@pytest.mark.parametrize(
  'argv',
  [
    ['--config.mlp.hidden_sizes=32', '--config.mlp.hidden_sizes=64'],
    ['--config.optim.batch_size=8', '--config.seed=1', '--config.optim.batch_size', '8'],
  ],
)
def test_a_config_field_given_twice_is_refused(capsys, argv):
  import main

  with pytest.raises(SystemExit) as exit:
    main._refuse_repeated(['main.py', f'--config={DEFAULT}', *argv])
  assert exit.value.code == 1
  (line,) = capsys.readouterr().err.splitlines()
  assert re.search(r'--config\.\S+ is given 2 times; give it once\.$', line)


# Waits and signals (issue 28, item 2): every blocking call given a dead peer, each signal at
# each phase reached cheaply. Bounds come from mlp/machinery/deadlines.py, made tiny here.
QUICK_STOP = {'MLP_STOP_SECONDS': '1'}
SLACK = 2.5  # Seconds past a bound for a busy 2-core machine to end a process.


@contextlib.contextmanager
def dead_peer(kind: str) -> Iterator[tuple[int, list]]:
  """A loopback port where nothing answers: 'refusing' (nothing listens) or 'silent' (a socket
  that accepts connections, listed as they come, and never sends a byte)."""
  server = socket.create_server(('127.0.0.1', 0))
  port, accepted = server.getsockname()[1], []
  if kind == 'refusing':
    server.close()
    yield port, accepted
    return

  def accept() -> None:
    with contextlib.suppress(OSError):
      while True:
        accepted.append(server.accept()[0])

  threading.Thread(target=accept, daemon=True).start()
  try:
    yield port, accepted
  finally:
    server.close()
    for connection in accepted:
      connection.close()


def _main_process(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
  command = [sys.executable, str(ROOT / 'main.py'), *args]
  return subprocess.Popen(
    command, stderr=subprocess.PIPE, text=True, cwd=cwd, env={**os.environ, **env}
  )


def _worker_args(process_id: int, port: int) -> list[str]:
  """A process of a two-process run whose other process never comes."""
  return [
    f'--config={DEFAULT}',
    '--num_processes=2',
    f'--process_id={process_id}',
    f'--coordinator_address=127.0.0.1:{port}',
  ]


def _stderr_until(process: subprocess.Popen, words: str) -> list[str]:
  """The lines of stderr up to the first holding words (all of them if it never comes)."""
  lines = []
  for line in process.stderr:
    lines.append(line)
    if words in line:
      break
  return lines


# (process id, its peer): a worker whose coordinator refuses or never answers, and a
# coordinator whose worker never comes (it listens itself, on a port nobody else uses).
COORDINATOR_CASES = [(1, 'refusing'), (1, 'silent'), (0, 'refusing')]


@pytest.mark.parametrize(('process_id', 'peer'), COORDINATOR_CASES)
def test_a_coordinator_wait_ends_at_its_bound_in_one_line(tmp_path, process_id, peer):
  with dead_peer(peer) as (port, _):
    env = {'MLP_COORDINATOR_SECONDS': '2'}
    process = _main_process(_worker_args(process_id, port), env, tmp_path)
    _stderr_until(process, 'Joining the run')
    start = time.perf_counter()
    stderr = process.communicate(timeout=60)[1]
    seconds = time.perf_counter() - start
  assert process.returncode == 1, stderr
  (line,) = stderr.splitlines()
  assert line.startswith('Not every process joined the run at 127.0.0.1:') and 'within 2s' in line
  assert seconds < 2 + SLACK


def _signal_while_joining(tmp_path: Path, signum: int) -> tuple[int, str, float]:
  with dead_peer('silent') as (port, accepted):
    env = {**QUICK_STOP, 'MLP_COORDINATOR_SECONDS': '300'}
    process = _main_process(_worker_args(1, port), env, tmp_path)
    _stderr_until(process, 'Joining the run')
    deadline = time.monotonic() + 30
    while not accepted and time.monotonic() < deadline:  # JAX is connecting: a wait in C.
      time.sleep(0.05)
    start = time.perf_counter()
    process.send_signal(signum)
    stderr = process.communicate(timeout=60)[1]
    return process.returncode, stderr, time.perf_counter() - start


def _signal_while_reading_a_bucket(tmp_path: Path, signum: int) -> tuple[int, str, float]:
  with dead_peer('silent') as (port, accepted):
    env = {
      **QUICK_STOP,
      'STORAGE_EMULATOR_HOST': f'http://127.0.0.1:{port}',  # Only this: no tensorstore URL.
      'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'none',
      'GOOGLE_CLOUD_PROJECT': 'test',
      'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false',
    }
    process = _main_process(['--mode=eval', '--workdir=gs://bucket/run'], env, tmp_path)
    deadline = time.monotonic() + 60
    while not accepted and process.poll() is None and time.monotonic() < deadline:
      time.sleep(0.05)
    time.sleep(0.3)
    start = time.perf_counter()
    process.send_signal(signum)
    stderr = process.communicate(timeout=60)[1]
    return process.returncode, stderr, time.perf_counter() - start


WAIT_PHASES = {
  'joining a coordinator that never answers': _signal_while_joining,
  'reading a bucket that never answers': _signal_while_reading_a_bucket,
}
SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]


@pytest.mark.parametrize('signum', SIGNALS, ids=lambda s: signal.Signals(s).name)
@pytest.mark.parametrize('phase', WAIT_PHASES)
def test_a_signal_ends_a_wait_on_a_dead_peer_within_the_bound(tmp_path, phase, signum):
  status, stderr, seconds = WAIT_PHASES[phase](tmp_path, signum)
  assert status == stopping.EXIT_STATUS[signum], stderr
  assert f'Stopped by {signal.Signals(signum).name}' in stderr.splitlines()[-1], stderr
  assert 'Traceback' not in stderr
  assert seconds < 1 + SLACK


# A step call that does not return for a while, as XLA's, waiting in three ways.
BLOCKERS = {
  'a device call (sleep)': 'time.sleep(600)',
  'a pipe that never delivers': 'os.read(os.pipe()[0], 1)',
  'a silent peer': 'socket.create_connection(("127.0.0.1", {port})).recv(1)',
}
IN_TRAINING = """
import os, socket, sys, time
from mlp.machinery import stopping
stopping.exit_on_signals()
with stopping.StopRequests() as stop:
  stop.begin()
  print('training', flush=True)
  {blocker}
"""


@pytest.mark.parametrize('signum', SIGNALS, ids=lambda s: signal.Signals(s).name)
@pytest.mark.parametrize('blocker', BLOCKERS)
def test_a_second_signal_ends_training_within_the_bound_saying_what_is_kept(
  tmp_path, blocker, signum
):
  with dead_peer('silent') as (port, _):
    code = IN_TRAINING.format(blocker=BLOCKERS[blocker].format(port=port))
    process = subprocess.Popen(
      [sys.executable, '-c', code],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      cwd=ROOT,
      env={**os.environ, **QUICK_STOP},
    )
    assert process.stdout.readline() == 'training\n'
    process.send_signal(signum)
    time.sleep(0.3)
    assert process.poll() is None  # The first waits for the next boundary.
    start = time.perf_counter()
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    seconds = time.perf_counter() - start
  assert process.returncode == stopping.EXIT_STATUS[signum], stderr
  first, last = stderr.splitlines()
  assert 'stopping at the next step-call boundary' in first
  assert last.startswith(f'Stopped by {signal.Signals(signum).name}: ended 1s after its second')
  assert 'checkpoints written before it are kept, one being written is not' in last
  assert 1 <= seconds < 1 + SLACK


# Phases of a run before its first step call: nothing to save, so a signal ends it at once.
BEFORE_TRAINING = {
  'loading and decoding data': (input_pipeline, 'load_splits'),
  'restoring a checkpoint': (checkpoint, 'restore_latest'),
  'compiling': (train, 'setup'),
}


@pytest.mark.parametrize('signum', SIGNALS, ids=lambda s: signal.Signals(s).name)
@pytest.mark.parametrize('phase', BEFORE_TRAINING)
def test_a_signal_before_the_first_step_ends_the_run_at_once(
  tmp_path, mock_mnist, monkeypatch, phase, signum
):
  module, name = BEFORE_TRAINING[phase]
  original = getattr(module, name)

  def signalled(*args, **kwargs):
    result = original(*args, **kwargs)
    os.kill(os.getpid(), signum)
    time.sleep(30)  # The handler raises here, as it would in a decoder's loop.
    return result

  monkeypatch.setattr(module, name, signalled)
  stopping.received.clear()
  start = time.perf_counter()
  with pytest.raises(stopping.Interrupted) as raised:
    train.train_and_evaluate(tiny_config(tmp_path), tmp_path / 'run')
  assert time.perf_counter() - start < 20
  assert raised.value.exit_status == stopping.EXIT_STATUS[signum]
  assert not step_dirs(tmp_path / 'run')
  stopping.received.clear()


def _fifo(path: Path) -> None:
  os.mkfifo(path)


def _unix_socket(path: Path) -> None:
  socket.socket(socket.AF_UNIX).bind(str(path))


def _device(path: Path) -> None:
  path.symlink_to('/dev/zero')  # Reading it never ends.


NOT_REGULAR = {'a FIFO': _fifo, 'a socket': _unix_socket, 'a device': _device}


@pytest.mark.parametrize('kind', NOT_REGULAR)
def test_a_file_that_is_not_regular_is_refused_in_one_line(tmp_path, kind):
  from mlp.machinery import files

  NOT_REGULAR[kind](tmp_path / reporting.METRICS_FILE)
  with pytest.raises(UserError, match='metrics.jsonl is not a regular file') as refused:
    files.read_bytes(tmp_path / reporting.METRICS_FILE)
  assert '\n' not in str(refused.value)
  with pytest.raises(IsADirectoryError):
    files.read_bytes(tmp_path)
  (tmp_path / 'plain').write_bytes(b'\x00\x01')
  assert files.read_bytes(tmp_path / 'plain') == b'\x00\x01'


def test_a_run_whose_metrics_jsonl_is_a_fifo_is_refused_not_blocked(straight, mock_mnist):
  metrics = straight / reporting.METRICS_FILE
  metrics.unlink()
  os.mkfifo(metrics)
  config = tiny_config(straight.parent, {**SMALL, 'optim.num_epochs': 3})
  with pytest.raises(UserError, match='metrics.jsonl is not a regular file'):
    train.train_and_evaluate(config, straight)
  assert metrics.is_fifo()


@pytest.mark.parametrize('value', ['abc', '0', '-1', 'nan', 'inf'])
def test_a_bound_that_is_not_a_number_of_seconds_is_one_line(value):
  done = run_main('--help', env={'MLP_STOP_SECONDS': value})
  assert done.returncode == 1
  assert (
    done.stderr
    == f'MLP_STOP_SECONDS={value!r} is not a number of seconds above 0; fix or unset it.\n'
  )
