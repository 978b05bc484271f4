"""Checkpoints: SIGKILL and resume, damaged and foreign checkpoints."""

import json
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import ROOT, TFRECORD_DIR, tiny_config

from mlp.core import checkpoint, train
from mlp.core.errors import UserError


def cli_train(workdir, cache_dir, *overrides):
  """A training process on real MNIST (TFDS_DATA_DIR's copy, decoded once into cache_dir)."""
  command = [
    sys.executable,
    str(ROOT / 'main.py'),
    '--config=' + str(ROOT / 'configs/default.py'),
    f'--workdir={workdir}',
    f'--config.data.dir={TFRECORD_DIR}',
    f'--config.run.cache_dir={cache_dir}',
    '--config.run.compilation_cache=False',
    '--config.mlp.hidden_sizes=32',
    '--config.optim.batch_size=50',
    '--config.optim.num_epochs=6',
    *overrides,
  ]
  return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished_checkpoints(workdir):
  steps = (workdir / checkpoint.CHECKPOINT_DIR).glob('*')
  return sorted((p for p in steps if p.name.isdigit()), key=lambda p: int(p.name))


def test_sigkill_after_first_checkpoint_then_resume_matches_uninterrupted(tmp_path, real_cache_dir):
  straight = cli_train(tmp_path / 'straight', real_cache_dir)
  assert straight.wait(timeout=300) == 0, straight.stderr.read()

  killed = cli_train(tmp_path / 'killed', real_cache_dir)
  deadline = time.time() + 240
  while not finished_checkpoints(tmp_path / 'killed') and time.time() < deadline:
    time.sleep(0.005)
  assert killed.poll() is None, 'the run ended before it could be killed'
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  assert killed.returncode == -signal.SIGKILL
  records = (tmp_path / 'killed' / 'metrics.jsonl').read_text().splitlines()
  assert 'test_loss' not in records[-1]

  resumed = cli_train(tmp_path / 'killed', real_cache_dir)
  _, stderr = resumed.communicate(timeout=300)
  assert resumed.returncode == 0, stderr
  assert 'Restored checkpoint' in stderr

  def numbers(workdir):
    lines = [json.loads(x) for x in (workdir / 'metrics.jsonl').read_text().splitlines()]
    return [
      {k: v for k, v in x.items() if k not in ('epoch_seconds', 'examples_per_sec')} for x in lines
    ]

  assert numbers(tmp_path / 'killed') == numbers(tmp_path / 'straight')
  *_, resumed_params = checkpoint.restore_for_inference(tmp_path / 'killed')
  *_, straight_params = checkpoint.restore_for_inference(tmp_path / 'straight')
  for a, b in zip(jax.tree.leaves(resumed_params), jax.tree.leaves(straight_params), strict=True):
    np.testing.assert_array_equal(a, b)


def damage(step_dir):
  """Overwrites every data file of a checkpoint with garbage of the same size."""
  for path in step_dir.rglob('*'):
    if path.is_file():
      path.write_bytes(b'\x00garbage' * (path.stat().st_size // 8 + 1))


def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, mock_mnist):
  config = tiny_config(tmp_path, {'optim.num_epochs': 2})
  straight = train.train_and_evaluate(config, tmp_path / 'straight')
  train.train_and_evaluate(config, tmp_path / 'run')
  latest = finished_checkpoints(tmp_path / 'run')[-1]
  damage(latest)
  # The run is complete, but its last checkpoint is gone: epoch 2 is trained again.
  resumed = train.train_and_evaluate(config, tmp_path / 'run')
  assert (tmp_path / 'run' / checkpoint.UNREADABLE_DIR / latest.name).is_dir()
  assert resumed['test_loss'] == straight['test_loss']
  assert [r['epoch'] for r in resumed['epochs']] == [1, 2]


def test_no_readable_checkpoint_is_a_one_line_error(tmp_path, mock_mnist):
  config = tiny_config(tmp_path, {'optim.num_epochs': 1})
  train.train_and_evaluate(config, tmp_path / 'run')
  (only,) = finished_checkpoints(tmp_path / 'run')
  damage(only)
  with pytest.raises(UserError, match=f'{only}.*cannot be read') as error:
    train.train_and_evaluate(config, tmp_path / 'run')
  assert '\n' not in str(error.value)
  assert only.is_dir(), 'nothing is moved or deleted when there is nothing to fall back to'


def test_checkpoint_of_another_format_version_is_refused(tmp_path, mock_mnist):
  config = tiny_config(tmp_path)
  train.train_and_evaluate(config, tmp_path / 'run')
  (step_dir,) = finished_checkpoints(tmp_path / 'run')
  (step_dir / 'meta' / 'metadata').write_text(json.dumps({'epoch': 1, 'format_version': 0}))
  with pytest.raises(UserError, match='format version 0'):
    train.train_and_evaluate(config, tmp_path / 'run')


def test_predicting_without_a_checkpoint_says_how_to_train(tmp_path, mock_mnist):
  train.train_and_evaluate(
    tiny_config(tmp_path, {'run.checkpoint_every_epochs': 0}), tmp_path / 'run'
  )
  with pytest.raises(UserError, match='train first'):
    checkpoint.restore_for_inference(tmp_path / 'run')
