"""A run's config.json: writing it, reading it back with this code's schema, and what a resume
may not change; and the train command that a given workdir accepts."""

import json
import os
import shlex
from pathlib import Path
from typing import Any

import ml_collections
from absl import logging

from input_pipeline.errors import UserError
from mlp.core import models
from mlp.core.configuration import SCHEMA, assign, defaults, get, in_use, with_role
from mlp.core.fields import Role
from mlp.machinery import checked, files

CONFIG_FILE = 'config.json'
# A field's value is a JSON scalar or list; whether it works is the schema's to check
# (configuration.assign and validate).
SHAPE = checked.Value(
  dict,
  fields={'model': checked.Value(str)},
  items=checked.Value((str, int, float, bool, list), nullable=True),
)
_WARNED: set[str] = set()  # config.json files whose dropped fields were told once.


def to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The fields in use by dotted path, as JSON-ready values."""
  return {path: get(config, path) for path in in_use(config)}


def save(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> None:
  """Writes the fields in use, from which later modes rebuild the model; atomically."""
  files.write_atomic(
    files.path(workdir) / CONFIG_FILE, json.dumps(to_dict(config), indent=2) + '\n'
  )


def load(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  """The config a workdir was trained with; fields this code added since fill in, if they may."""
  path = files.path(workdir) / CONFIG_FILE
  if not path.is_file():
    raise UserError(f'{path} does not exist; train into this workdir first.')
  action = 'it is not a config of this code: train into a new workdir'
  values = checked.read_json(path, SHAPE, action)
  config = defaults()
  config.model = values['model'] if values['model'] in models.REGISTRY else config.model
  unknown = sorted(set(values) - set(in_use(config)))
  missing = sorted(set(in_use(config)) - set(values))
  refused = [p for p in missing if not SCHEMA[p].fills_older_runs]
  if refused:
    raise UserError(
      f'{path} has no {", ".join(refused)}, which this code needs to reproduce the run; '
      'train it again with this code into a new workdir.'
    )
  # Fields added since fill in silently: they behave as the run did. Dropped ones are told.
  if unknown and str(path) not in _WARNED:
    _WARNED.add(str(path))
    logging.warning('%s was written by other code: ignoring %s.', path, ', '.join(unknown))
  values = {key: value for key, value in values.items() if key not in unknown}
  try:
    for key, value in values.items():
      assign(config, key, value)
  except UserError as error:
    raise UserError(f'{path}: {error}; train into a new workdir.') from None
  return config


def resume_conflicts(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> str:
  """The fields a resume may not change on which two configs differ, as 'path: x -> y'.

  A cosine schedule's length is optim.num_epochs, so there that is fixed too.
  """
  roles = [Role.RESULT, Role.TRACED, Role.SPLIT]
  if config.optim.schedule == 'cosine':
    roles.append(Role.LENGTH)
  changed = [
    f'{path}: {get(saved, path)!r} -> {get(config, path)!r}'
    for path in with_role(config, *roles)
    if path in in_use(saved) and get(saved, path) != get(config, path)
  ]
  if saved.model != config.model:
    changed.insert(0, f'model: {saved.model!r} -> {config.model!r}')
  return ', '.join(dict.fromkeys(changed))


def _flag_value(value) -> str:
  if isinstance(value, (tuple, list)):
    return ','.join(map(str, value))
  return str(value)


def train_command(config: ml_collections.ConfigDict, workdir: Path) -> str:
  """A train command this workdir accepts: configs/default.py and the saved fields that differ.

  Exact whatever config file made the run, since the workdir's config.json holds every field.
  """
  base = defaults()
  roles = (Role.RESULT, Role.TRACED, Role.SPLIT, Role.LENGTH)
  paths = ['model', *(p for p in with_role(config, *roles) if p != 'model')]
  overrides = [
    shlex.quote(f'--config.{path}={_flag_value(get(config, path))}')
    for path in paths
    if get(config, path) != get(base, path)
  ]
  return ' '.join(
    ['python main.py --config=configs/default.py', *overrides, shlex.quote(f'--workdir={workdir}')]
  )
