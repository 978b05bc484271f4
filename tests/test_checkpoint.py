"""Checkpoints: SIGKILL and resume, damaged and foreign checkpoints."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT, TFRECORD_DIR, tiny_config

from input_pipeline.errors import UserError
from mlp.core import train
from mlp.machinery import checkpoint

pytestmark = pytest.mark.unit


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


def damage(step_dir):
  """Overwrites every data file of a checkpoint with garbage of the same size."""
  for path in step_dir.rglob('*'):
    if path.is_file():
      path.write_bytes(b'\x00garbage' * (path.stat().st_size // 8 + 1))


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
