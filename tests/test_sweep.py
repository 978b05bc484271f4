"""The sweep: expanding the space, selecting on validation, vmapped trials, re-runs."""

import importlib.util
import json

import numpy as np
import pytest
from conftest import tiny_config

from input_pipeline.errors import UserError
from mlp.core import configuration, models, train
from mlp.core.fields import Role
from mlp.tools import sweep

pytestmark = pytest.mark.integration

SPACE = {
  'grid': {'optim.learning_rate': (1e-3, 3e-3), 'mlp.hidden_sizes': ((4,), (8, 8))},
  'random': {'mlp.dropout_rate': ('uniform', 0.0, 0.5), 'optim.batch_size': ('log_uniform', 8, 64)},
  'num_random': 3,
  'seed': 0,
  'max_parallel': 8,
}


def sweep_config(tmp_path, grid, overrides=None, **sweep_fields):
  config = tiny_config(tmp_path, {'optim.num_epochs': 2, **(overrides or {})})
  values = {'grid': grid, 'random': {}, 'num_random': 0, 'seed': 0, 'max_parallel': 8}
  for name, value in {**values, **sweep_fields}.items():
    config.sweep[name] = value
  return config


def test_expand_is_every_grid_point_with_every_draw_and_reproducible():
  trials = sweep.expand(SPACE)
  assert len(trials) == 4 * 3
  grid_points = {(t['optim.learning_rate'], t['mlp.hidden_sizes']) for t in trials}
  assert len(grid_points) == 4
  draws = {(t['mlp.dropout_rate'], t['optim.batch_size']) for t in trials}
  assert len(draws) == 3
  assert all(0.0 <= d < 0.5 and isinstance(b, int) and 8 <= b <= 64 for d, b in draws)
  assert sweep.expand(SPACE) == trials
  assert sweep.expand({**SPACE, 'seed': 1}) != trials
  assert sweep.expand({**SPACE, 'random': {}}) == [
    {'optim.learning_rate': lr, 'mlp.hidden_sizes': h}
    for lr in (1e-3, 3e-3)
    for h in ((4,), (8, 8))
  ]


def test_selection_reads_validation_only():
  def record(name, val, test, val_loss=0.1):
    return {'id': name, 'val_accuracy': val, 'val_loss': val_loss, 'test_accuracy': test}

  records = [
    record('high_test', 0.95, 0.99),
    record('high_val', 0.97, 0.90),
    record('tied_val_higher_loss', 0.97, 0.99, val_loss=0.2),
    record('diverged', 0.98, 0.98, val_loss=float('nan')),
  ]
  assert sweep.select_best(records)['id'] == 'high_val'


def load_config_file(path):
  spec = importlib.util.spec_from_file_location('best_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize('model', sorted(models.REGISTRY))
def test_vmapped_trials_equal_each_trained_alone(tmp_path, mock_mnist, model):
  """Two trials differing in every traced field share a program; decay, schedule, distortions."""
  config = configuration.defaults()
  config.model = model
  traced = {
    path: ('uniform', 0.0, 0.3) if 'rate' not in path else ('log_uniform', 1e-3, 1e-2)
    for path in configuration.with_role(config, Role.TRACED)
  }
  traced['seed'] = ('uniform', 0, 1000)
  traced['optim.weight_decay'] = ('log_uniform', 1e-4, 1e-2)
  fixed = {
    'model': model,
    'optim.schedule': 'cosine',
    'optim.warmup_epochs': 0.5,
    'augment.rotation': 10.0,
    'augment.elastic_alpha': 8.0,
    'run.steps_per_call': 3,  # The training loop's own chunked epochs.
  }
  config = sweep_config(tmp_path, {}, fixed, random=nested(traced), num_random=2)
  best = sweep.run(config, tmp_path / 'sweep')
  lines = (tmp_path / 'sweep' / 'sweep.jsonl').read_text().splitlines()
  records = [json.loads(line) for line in lines]
  assert [r['trials_in_program'] for r in records] == [2, 2]
  assert all(records[0]['overrides'][k] != records[1]['overrides'][k] for k in traced)

  best_config = load_config_file(tmp_path / 'sweep' / 'best_config.py')
  assert {k: configuration.get(best_config, k) for k in best['overrides']} == best['overrides']
  for record in records:
    overrides = {**record['overrides'], 'run.checkpoint_every_epochs': 0}
    alone = train.train_and_evaluate(sweep.make_config(config, overrides), tmp_path / record['id'])
    last = alone['records'][-1]
    for key in ('train_loss', 'val_loss', 'val_accuracy', 'test_loss', 'test_accuracy'):
      np.testing.assert_allclose(record[key], {**last, **alone}[key], rtol=1e-5, err_msg=key)


def nested(flat: dict) -> dict:
  """{'optim.learning_rate': x} -> {'optim': {'learning_rate': x}}, as sweep configs nest."""
  tree = {}
  for path, value in flat.items():
    *groups, name = path.split('.')
    node = tree
    for group in groups:
      node = node.setdefault(group, {})
    node[name] = value
  return tree


def test_rerun_trains_only_new_trials(tmp_path, mock_mnist, monkeypatch):
  trained = []
  train_trials = sweep.train_trials

  def counting(configs, splits):
    trained.extend(c.optim.learning_rate for c in configs)
    return train_trials(configs, splits)

  monkeypatch.setattr(sweep, 'train_trials', counting)
  grid = {'optim': {'learning_rate': (1e-3, 2e-3)}}
  sweep.run(sweep_config(tmp_path, grid), tmp_path / 'sweep')
  grid['optim']['learning_rate'] += (3e-3,)
  sweep.run(sweep_config(tmp_path, grid), tmp_path / 'sweep')
  assert trained == [1e-3, 2e-3, 3e-3]
  table = (tmp_path / 'sweep' / 'sweep.md').read_text().splitlines()
  assert len([line for line in table if line.startswith('| ') and line[2].isdigit()]) == 3


def test_searching_the_split_is_refused(tmp_path):
  with pytest.raises(UserError, match='data.seed'):
    sweep.run(sweep_config(tmp_path, {'data': {'seed': (0, 1)}}), tmp_path / 'sweep')
