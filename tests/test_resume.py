"""Training runs end to end on mocked MNIST: placements, resuming, finished and diverging runs,
changed configs and damaged checkpoints."""

import numpy as np
import pytest
from conftest import tiny_config
from test_checkpoint import damage, finished_checkpoints
from test_train import NUMBERS, read_metrics

from input_pipeline.errors import UserError
from mlp.core import train
from mlp.machinery import checkpoint

pytestmark = pytest.mark.integration


def test_host_and_device_placement_train_alike(tmp_path, mock_mnist):
  config = tiny_config(tmp_path, {'run.checkpoint_every_epochs': 0, 'optim.num_epochs': 2})
  on_device = train.train_and_evaluate(config, tmp_path / 'device')
  config.run.placement, config.run.steps_per_call = 'host', 2
  on_host = train.train_and_evaluate(config, tmp_path / 'host')
  for key in ('test_loss', 'test_accuracy'):
    np.testing.assert_allclose(on_host[key], on_device[key], rtol=1e-4, atol=1e-4)


def test_resume_continues_to_the_same_numbers(tmp_path, mock_mnist):
  config = tiny_config(tmp_path, {'optim.num_epochs': 3})
  straight = train.train_and_evaluate(config, tmp_path / 'straight')
  config.optim.num_epochs = 1
  train.train_and_evaluate(config, tmp_path / 'resumed')
  config.optim.num_epochs = 3
  resumed = train.train_and_evaluate(config, tmp_path / 'resumed')
  assert resumed == {**straight, 'records': resumed['records']}
  assert [r['epoch'] for r in read_metrics(tmp_path / 'resumed')[:-1]] == [1, 2, 3]
  resumed_lines, straight_lines = (
    read_metrics(tmp_path / 'resumed'),
    read_metrics(tmp_path / 'straight'),
  )
  for a, b in zip(resumed_lines, straight_lines, strict=True):
    assert {k: a.get(k) for k in NUMBERS} == {k: b.get(k) for k in NUMBERS}


def test_finished_run_reports_without_training(tmp_path, mock_mnist):
  config = tiny_config(tmp_path)
  first = train.train_and_evaluate(config, tmp_path / 'run')
  again = train.train_and_evaluate(config, tmp_path / 'run')
  assert again == first
  assert len(read_metrics(tmp_path / 'run')) == 2


def test_diverging_loss_stops_without_a_checkpoint(tmp_path, mock_mnist):
  config = tiny_config(
    tmp_path,
    {'optim.learning_rate': 1e12, 'mlp.hidden_sizes': (16, 16, 16), 'optim.num_epochs': 3},
  )
  with pytest.raises(UserError, match=r'became \S+ by step \d+ \(diverged\).*new --workdir'):
    train.train_and_evaluate(config, tmp_path / 'run')
  assert not [
    p for p in (tmp_path / 'run' / checkpoint.CHECKPOINT_DIR).iterdir() if p.name.isdigit()
  ]


def test_changed_model_in_a_workdir_is_refused(tmp_path, mock_mnist):
  config = tiny_config(tmp_path)
  train.train_and_evaluate(config, tmp_path / 'run')
  config.mlp.hidden_sizes = (8, 8)
  with pytest.raises(UserError, match=r'mlp.hidden_sizes: \(16,\) -> \(8, 8\)'):
    train.train_and_evaluate(config, tmp_path / 'run')


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
  assert [r['epoch'] for r in resumed['records']] == [1, 2]
