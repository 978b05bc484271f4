"""Commands to suggest that work for a given workdir, rather than the default config's."""

import shlex
from pathlib import Path

import ml_collections

from mlp.core import configuration
from mlp.core.fields import Role


def _flag_value(value) -> str:
  if isinstance(value, (tuple, list)):
    return ','.join(map(str, value))
  return str(value)


def train_command(config: ml_collections.ConfigDict, workdir: Path) -> str:
  """A train command this workdir accepts: configs/default.py and the saved fields that differ.

  Exact whatever config file made the run, since the workdir's config.json holds every field.
  """
  base = configuration.defaults()
  roles = (Role.RESULT, Role.TRACED, Role.SPLIT, Role.LENGTH)
  paths = ['model', *(p for p in configuration.with_role(config, *roles) if p != 'model')]
  overrides = [
    shlex.quote(f'--config.{path}={_flag_value(configuration.get(config, path))}')
    for path in paths
    if configuration.get(config, path) != configuration.get(base, path)
  ]
  return ' '.join(
    ['python main.py --config=configs/default.py', *overrides, shlex.quote(f'--workdir={workdir}')]
  )
