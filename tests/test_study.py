"""A sweep shared by worker processes through one Optuna study in sqlite.

One worker is killed with SIGKILL mid-trial; then it is started again beside a second one. The
study must end with every trial of the sweep finished once (completed or pruned), the killed
worker's trial retried rather than lost, and the best trial's best_config.py retraining to the
validation accuracy the study holds. The data is learnable (a bar per class), so that trials
with a tiny learning rate lose and the median pruner stops them.
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from conftest import ROOT, tiny_config

import input_pipeline
from mlp.core import train
from mlp.tools import study as shared_study
from mlp.tools import sweep

pytestmark = pytest.mark.integration

STUDY = 'shared'
SEARCH = {
  'grid': {},
  'random': {'optim': {'learning_rate': ('log_uniform', 1e-6, 3e-2)}},
  'num_random': 6,
  'seed': 3,
  'max_parallel': 2,
  'study_name': STUDY,
  'sampler': 'random',
  'pruner': 'median',
  'heartbeat_seconds': 1,
}
SIZES = {'optim.num_epochs': 4, 'optim.batch_size': 16, 'run.eval_batch_size': 8}


def learnable_splits(seed: int = 0) -> input_pipeline.Splits:
  """Noise with a bright bar at a row that says the class: easy for a good learning rate."""

  def split(size: int) -> input_pipeline.Split:
    rng = np.random.default_rng(seed + size)
    labels = rng.integers(0, 10, size).astype(np.int32)
    images = rng.integers(0, 60, (size, 28, 28, 1), np.uint8)
    for image, label in zip(images, labels, strict=True):
      image[2 + 2 * label : 4 + 2 * label, 4:24] = 255
    return input_pipeline.Split(images, labels, tuple('0123456789'))

  return input_pipeline.Splits('mnist', split(320), split(80), split(80))


def study_config(tmp_path: Path, storage: str):
  config = tiny_config(tmp_path, SIZES)
  for name, value in {**SEARCH, 'storage': storage}.items():
    config.sweep[name] = value
  return config


def _worker(tmp_path: str, storage: str, workdir: str, result_file: str) -> None:
  """One sweep worker on the learnable splits; writes the trials it trained."""
  input_pipeline.load_splits = lambda *args, **kwargs: learnable_splits()
  best = sweep.run(study_config(Path(tmp_path), storage), workdir)
  Path(result_file).write_text(json.dumps(best))


def start(tmp_path: Path, storage: str, name: str) -> subprocess.Popen:
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': f'{ROOT}:{ROOT / "tests"}'}
  command = [sys.executable, __file__, str(tmp_path), storage, str(tmp_path / name)]
  return subprocess.Popen(
    [*command, str(tmp_path / f'{name}.json')],
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def finish(process: subprocess.Popen) -> None:
  output = process.communicate(timeout=600)[0]
  assert process.returncode == 0, output[-3000:]


def running_trials(storage: str) -> list:
  try:
    study = optuna.load_study(study_name=STUDY, storage=storage)
  except KeyError:  # Not created yet.
    return []
  return study.get_trials(states=(optuna.trial.TrialState.RUNNING,))


@pytest.fixture(scope='module')
def shared(tmp_path_factory):
  """The study after a worker was killed mid-trial and two workers then finished it."""
  tmp_path = tmp_path_factory.mktemp('study')
  storage = f'sqlite:///{tmp_path / "study.db"}'
  killed = start(tmp_path, storage, 'killed')
  deadline = time.time() + 300
  while not running_trials(storage) and killed.poll() is None and time.time() < deadline:
    time.sleep(0.2)
  assert killed.poll() is None, killed.communicate()[0][-3000:]
  killed.send_signal(signal.SIGKILL)
  killed.communicate()
  workers = [start(tmp_path, storage, name) for name in ('restarted', 'second')]
  for worker in workers:
    finish(worker)
  results = {n: json.loads((tmp_path / f'{n}.json').read_text()) for n in ('restarted', 'second')}
  return optuna.load_study(study_name=STUDY, storage=storage), results, tmp_path


def test_every_trial_finished_once_across_workers(shared):
  study, results, tmp_path = shared
  states = optuna.trial.TrialState
  done = study.get_trials(states=(states.COMPLETE, states.PRUNED))
  listed = sweep.expand({**SEARCH, 'random': sweep._flatten(SEARCH['random'])})
  assert sorted(t.params['optim.learning_rate'] for t in done) == sorted(
    t['optim.learning_rate'] for t in listed
  ), 'each listed trial finished exactly once'
  trained = [set(r['trained']) for r in results.values()]
  assert not trained[0] & trained[1], 'no trial trained by both workers'
  assert trained[0] | trained[1] == {t.number for t in done}
  assert all(r['trained'] for r in results.values()), 'both workers took part'
  assert not study.get_trials(states=(states.RUNNING, states.WAITING))


def test_a_killed_workers_trial_is_retried_not_lost(shared):
  study, _, _ = shared
  states = optuna.trial.TrialState
  failed = [t for t in study.get_trials(states=(states.FAIL,)) if 'surplus' not in t.user_attrs]
  assert failed, 'the killed worker left a running trial'
  retries = {t.system_attrs.get('failed_trial') for t in study.get_trials()}
  assert {t.number for t in failed} <= retries


def test_losing_trials_are_pruned_early(shared):
  study, _, _ = shared
  pruned = study.get_trials(states=(optuna.trial.TrialState.PRUNED,))
  assert pruned
  for trial in pruned:
    record = json.loads(trial.user_attrs['record'])
    assert record['stopped_at_epoch'] < SIZES['optim.num_epochs']
    assert len(record['val_accuracy_per_epoch']) == record['stopped_at_epoch']


def test_best_config_retrains_to_the_studys_accuracy(shared, monkeypatch):
  study, results, tmp_path = shared
  path = tmp_path / 'restarted' / sweep.BEST_CONFIG_FILE
  spec = importlib.util.spec_from_file_location('best_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  assert config.optim.learning_rate == study.best_trial.params['optim.learning_rate']
  monkeypatch.setattr(input_pipeline, 'load_splits', lambda *args, **kwargs: learnable_splits())
  retrained = train.train_and_evaluate(config, tmp_path / 'retrained')
  np.testing.assert_allclose(retrained['records'][-1]['val_accuracy'], study.best_value, rtol=1e-5)
  assert results['restarted']['number'] == results['second']['number'] == study.best_trial.number


def queued_study(tmp_path: Path, trials: int) -> tuple[dict, dict]:
  """A study in sqlite with trials queued, as its first worker leaves it; its search and space."""
  search = {**SEARCH, 'storage': f'sqlite:///{tmp_path / "queue.db"}', 'max_parallel': 1}
  search |= {'random': sweep._flatten(SEARCH['random']), 'num_random': trials}
  listed = sweep.expand(search)
  shared_study.open_study(search, listed, shared_study._storage(search), {})
  return search, shared_study.distributions(search)


def test_workers_asking_at_once_never_take_the_same_trial(tmp_path):
  search, space = queued_study(tmp_path, trials=24)
  taken = []

  def worker():
    storage = shared_study._storage(search)
    study = optuna.load_study(study_name=STUDY, storage=storage)
    while trials := shared_study.ask(study, search, space, storage):
      taken.extend(t.number for t in trials)

  threads = [threading.Thread(target=worker) for _ in range(4)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert sorted(taken) == list(range(24)), 'each queued trial taken once'


def test_a_trial_taken_but_never_claimed_is_retried(tmp_path, monkeypatch):
  """A worker killed between taking a trial and its first heartbeat leaves no heartbeat."""
  search, space = queued_study(tmp_path, trials=2)
  storage = shared_study._storage(search)
  study = optuna.load_study(study_name=STUDY, storage=storage)
  orphan = study.ask(space)  # Taken, then the worker died: no heartbeat, no claim.
  asked = shared_study.ask(study, search, space, storage)
  assert [t.number for t in asked] == [1], 'a fresh orphan is left to its worker'
  monkeypatch.setattr(shared_study, 'SILENT_BEATS', 0)
  asked = shared_study.ask(study, search, space, storage)
  states = optuna.trial.TrialState
  assert study.get_trials(states=(states.FAIL,))[0].number == orphan.number
  (retry,) = [study.get_trials()[t.number] for t in asked]
  assert retry.system_attrs['failed_trial'] == orphan.number
  assert retry.params == orphan.params


if __name__ == '__main__':
  _worker(*sys.argv[1:])
