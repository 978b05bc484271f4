"""Trains, benchmarks and uses an MNIST MLP: `python main.py --config=configs/default.py`."""

import sys
from pathlib import Path

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from mlp import devices
from mlp.errors import UserError

config_flags.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py).')
flags.DEFINE_string('workdir', None, 'Run directory; default: a new one under ./runs/.')
flags.DEFINE_enum('mode', 'train', ['train', 'benchmark'], 'What to do.')
FLAGS = flags.FLAGS


def run(mode: str) -> None:
  config = FLAGS.config
  if config is None:
    raise UserError('--config is required, e.g. --config=configs/default.py.')
  devices.configure_runtime(config)
  logging.info(
    'JAX %s, backend %s, %d devices: %s',
    jax.__version__,
    jax.default_backend(),
    jax.device_count(),
    jax.devices(),
  )
  if mode == 'train':
    from mlp import train

    config_name = Path(config_flags.get_config_filename(FLAGS['config'])).stem
    workdir = FLAGS.workdir or train.default_workdir(config_name)
    logging.info('Workdir: %s', workdir)
    train.train_and_evaluate(config, workdir)
  elif mode == 'benchmark':
    from mlp import benchmark

    benchmark.run(config)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  try:
    run(FLAGS.mode)
  except UserError as error:
    logging.error('%s', error)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
