"""train_and_evaluate end to end on mocked MNIST, and on real MNIST for accuracy."""

import json
import time

import numpy as np
import pytest
from conftest import tiny_config

from mlp.core import metrics, train
from mlp.machinery import reporting, run_config

pytestmark = pytest.mark.unit

EPOCH_KEYS = {
  'epoch',
  *(f'{split}_{m.name}' for split in ('train', 'val') for m in metrics.PER_EXAMPLE),
  *(m.name for m in metrics.LAST_BATCH),
  'step',
  'examples_per_sec',
  'train_seconds',
  'elapsed_seconds',
}
TEST_KEYS = {f'test_{m.name}' for m in metrics.PER_EXAMPLE}
NUMBERS = ('train_loss', 'train_accuracy', 'val_loss', 'val_accuracy')


def numbers_of(result: dict) -> list:
  """A run's losses and accuracies, without its timings."""
  return [{k: e[k] for k in NUMBERS} for e in result['records']] + [result['test_loss']]


def read_metrics(workdir):
  return [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]


def test_writes_metrics_config_and_pictures(tmp_path, mock_mnist):
  config = tiny_config(tmp_path, {'optim.num_epochs': 2, 'run.pictures': True})
  result = train.train_and_evaluate(config, tmp_path / 'run')
  lines = read_metrics(tmp_path / 'run')
  assert [set(line) for line in lines[:2]] == [EPOCH_KEYS, EPOCH_KEYS]
  assert [line['epoch'] for line in lines[:2]] == [1, 2]
  assert lines[2] == {
    'step': lines[1]['step'],
    'epoch': 2,
    **{key: result[key] for key in TEST_KEYS},
  }
  assert lines[:2] == result['records']
  assert 0.0 <= result['test_accuracy'] <= 1.0 and np.isfinite(result['test_loss'])
  assert run_config.to_dict(run_config.load(tmp_path / 'run')) == run_config.to_dict(config)
  deadline = time.monotonic() + 120  # Drawn by a child process after the run returns.
  while (tmp_path / 'run' / reporting.PICTURE_INPUTS).exists() and time.monotonic() < deadline:
    time.sleep(0.1)
  for picture in reporting.PICTURES:
    assert (tmp_path / 'run' / picture).stat().st_size > 1000


def test_same_config_gives_identical_numbers(tmp_path, mock_trained_workdir, mock_dataset):
  """Trained again with the shared run's config: every number is the same."""
  again = train.train_and_evaluate(run_config.load(mock_trained_workdir), tmp_path / 'again')
  *epochs, test = read_metrics(mock_trained_workdir)
  assert numbers_of(again) == [{k: e[k] for k in NUMBERS} for e in epochs] + [test['test_loss']]


def test_eval_mode_reproduces_the_test_metrics(mock_trained_workdir, mock_dataset):
  *epochs, test = read_metrics(mock_trained_workdir)
  evaluated = train.evaluate_checkpoint(mock_trained_workdir)
  assert evaluated['test_accuracy'] == test['test_accuracy']
  np.testing.assert_allclose(evaluated['test_loss'], test['test_loss'], rtol=1e-6)
  assert evaluated['val_accuracy'] == epochs[-1]['val_accuracy']


def test_how_an_epoch_is_split_into_calls_changes_no_reported_number(tmp_path, mock_mnist):
  """Epoch-end metrics (norms, rate) included: run.steps_per_call is an execution field."""
  results = [
    train.train_and_evaluate(
      tiny_config(tmp_path, {'run.checkpoint_every_epochs': 0, 'run.steps_per_call': calls}),
      tmp_path / f'calls-{calls}',
    )
    for calls in (0, 2)
  ]
  numbers = EPOCH_KEYS - {'examples_per_sec', 'train_seconds', 'elapsed_seconds'}
  whole, split = ([{k: e[k] for k in numbers} for e in r['records']] for r in results)
  for a, b in zip(whole, split, strict=True):
    for key in numbers:
      np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=key)


def test_records_come_every_n_steps_and_carry_step_and_epoch(tmp_path, mock_mnist):
  every = {'run.log_every_steps': 2, 'run.eval_every_steps': 4, 'run.checkpoint_every_steps': 4}
  config = tiny_config(tmp_path, {'optim.num_epochs': 2, **every})
  records = train.train_and_evaluate(config, tmp_path / 'run')['records']
  per_epoch = records[-1]['step'] // 2
  assert [r['step'] for r in records] == list(range(2, 2 * per_epoch + 1, 2))
  assert [r['epoch'] for r in records] == [-(-r['step'] // per_epoch) for r in records]
  for r in records:
    assert 'train_loss' in r
    assert ('val_loss' in r) == (r['step'] % 4 == 0 or r['step'] == 2 * per_epoch)
  saved = sorted(int(p.name) for p in (tmp_path / 'run' / 'checkpoints').iterdir())
  assert saved[-1] == 2 * per_epoch and all(s % 4 == 0 or s % per_epoch == 0 for s in saved)


def test_a_run_resumed_from_a_step_checkpoint_reports_what_one_run_does(tmp_path, mock_mnist):
  every = {'run.log_every_steps': 3, 'run.eval_every_steps': 3, 'run.checkpoint_every_steps': 3}
  straight = train.train_and_evaluate(
    tiny_config(tmp_path, {'optim.num_epochs': 2, **every}), tmp_path / 'straight'
  )
  train.train_and_evaluate(tiny_config(tmp_path, {'optim.num_epochs': 1, **every}), tmp_path / 'b')
  resumed = train.train_and_evaluate(
    tiny_config(tmp_path, {'optim.num_epochs': 2, **every}), tmp_path / 'b'
  )
  assert numbers_of(resumed) == numbers_of(straight)


def test_an_averaged_run_is_evaluated_and_restored_with_its_average(tmp_path, mock_mnist):
  plain = train.train_and_evaluate(tiny_config(tmp_path), tmp_path / 'plain')
  averaged = train.train_and_evaluate(
    tiny_config(tmp_path, {'optim.ema_decay': 0.9}), tmp_path / 'averaged'
  )
  assert numbers_of(averaged)[0]['train_loss'] == numbers_of(plain)[0]['train_loss']
  assert averaged['test_loss'] != plain['test_loss']
  evaluated = train.evaluate_checkpoint(tmp_path / 'averaged')  # predict, export, serve: the same.
  np.testing.assert_allclose(evaluated['test_loss'], averaged['test_loss'], rtol=1e-6)


def test_a_fraction_of_an_epoch_trains_that_share_of_its_steps(tmp_path, mock_mnist):
  records = train.train_and_evaluate(
    tiny_config(tmp_path, {'optim.num_epochs': 1.5}), tmp_path / 'run'
  )['records']
  per_epoch = records[0]['step']
  assert [(r['step'], r['epoch']) for r in records] == [(per_epoch, 1), (round(1.5 * per_epoch), 2)]
