"""The config schema: defaults, validation, saving, and reading runs saved by other code."""

import dataclasses
import json
import logging

import pytest
from conftest import tiny_config

from input_pipeline.errors import UserError
from mlp.core import configuration, fields, models
from mlp.core.fields import Role
from mlp.machinery import run_config

pytestmark = pytest.mark.unit


def saved_run(tmp_path, drop: tuple[str, ...] = (), add: dict | None = None):
  """A workdir whose config.json lacks the fields `drop` and has the extra ones `add`."""
  config = tiny_config(tmp_path)
  tmp_path.joinpath('run').mkdir()
  run_config.save(config, tmp_path / 'run')
  path = tmp_path / 'run' / run_config.CONFIG_FILE
  values = json.loads(path.read_text())
  values = {k: v for k, v in values.items() if k not in drop} | (add or {})
  path.write_text(json.dumps(values))
  return config, tmp_path / 'run'


def test_saved_config_reads_back_the_same(tmp_path):
  config, workdir = saved_run(tmp_path)
  assert run_config.to_dict(run_config.load(workdir)) == run_config.to_dict(config)


# The fields this round added: a run saved before them reads back with no warning.
ADDED_SINCE = (
  'optim.optimizer',
  'optim.beta1',
  'optim.beta2',
  'optim.momentum',
  'optim.nesterov',
  'optim.clip_grad_norm',
  'optim.accumulate_steps',
  'optim.ema_decay',
  'run.eval_every_steps',
  'run.log_every_steps',
  'run.checkpoint_every_steps',
)


def test_a_run_saved_before_fields_were_added_reads_back_silently(tmp_path, caplog):
  config, workdir = saved_run(tmp_path, drop=ADDED_SINCE)
  with caplog.at_level(logging.WARNING):
    loaded = run_config.load(workdir)
  assert run_config.to_dict(loaded) == run_config.to_dict(config)
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_configs_default_sets_every_declared_field_to_its_declared_default():
  from configs import default
  from mlp.tools import fields as tool_fields

  declared = configuration.defaults(tool_fields.GROUPS).to_dict()
  assert default.get_config().to_dict() == declared


def test_a_missing_field_that_changes_results_is_refused_by_name(tmp_path):
  _, workdir = saved_run(tmp_path, drop=('optim.label_smoothing',))
  with pytest.raises(UserError, match=r'has no optim\.label_smoothing, which this code needs'):
    run_config.load(workdir)


def test_a_result_field_that_behaves_as_before_fills_in(tmp_path, monkeypatch):
  field = configuration.SCHEMA['optim.label_smoothing']
  same = dataclasses.replace(field, same_as_before=True)
  monkeypatch.setitem(configuration.SCHEMA, 'optim.label_smoothing', same)
  _, workdir = saved_run(tmp_path, drop=('optim.label_smoothing',))
  assert run_config.load(workdir).optim.label_smoothing == field.default


def test_fields_this_code_no_longer_has_are_ignored_with_a_warning(tmp_path, caplog):
  _, workdir = saved_run(tmp_path, add={'benchmark.repeats': 5})
  with caplog.at_level(logging.WARNING):
    run_config.load(workdir)
  assert 'ignoring benchmark.repeats' in caplog.text


def test_tool_groups_are_read_but_never_saved(tmp_path):
  config = configuration.defaults({'tool': {'size': fields.positive(3, Role.EXECUTION, 'A size.')}})
  assert config.tool.size == 3
  assert not any(path.startswith('tool.') for path in run_config.to_dict(config))


def test_every_field_default_is_valid():
  for path, field in configuration.SCHEMA.items():
    assert field.default is None or field.valid(field.default), path


def test_only_the_selected_models_group_is_in_use():
  config = configuration.defaults()
  groups = {path.partition('.')[0] for path in configuration.in_use(config) if '.' in path}
  assert groups & set(models.REGISTRY) == {config.model}


def test_validate_names_the_field_and_what_works():
  config = configuration.defaults()
  config.optim.batch_size = 0
  with pytest.raises(UserError, match=r'optim\.batch_size=0: expected a positive number'):
    configuration.validate(config)
