"""Trains, benchmarks and uses an MNIST MLP: `python main.py --config=configs/default.py`."""

import logging as std_logging
import sys
from pathlib import Path

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from mlp import configuration, devices
from mlp.errors import UserError

config_flags.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py).')
flags.DEFINE_string('workdir', None, 'Run directory; default: a new one under ./runs/.')
flags.DEFINE_enum(
  'mode',
  'train',
  ['train', 'eval', 'benchmark', 'predict', 'export', 'sweep', 'check'],
  'train (or resume in --workdir); eval, predict, export: use the latest checkpoint in --workdir;'
  ' benchmark: time training steps; sweep: tune (--config=configs/sweep.py);'
  ' check: what matters on a new GPU/TPU machine, one summary table.',
)
flags.DEFINE_multi_string('image', [], 'predict: an image file or a directory of images.')
flags.DEFINE_enum('output', 'text', ['text', 'json'], 'predict: output format on stdout.')
flags.DEFINE_string('save_preprocessed', None, 'predict: directory for the 28x28 model inputs.')
flags.DEFINE_bool(
  'distributed',
  False,
  'Join a run of several processes (hosts); alone, JAX finds the cluster (Cloud TPU pods,'
  ' SLURM, Open MPI). Implied by the next three flags or $JAX_COORDINATOR_ADDRESS,'
  ' $JAX_NUM_PROCESSES and $JAX_PROCESS_ID, which give their defaults.',
)
flags.DEFINE_string('coordinator_address', None, 'Several processes: host:port of process 0.')
flags.DEFINE_integer('num_processes', None, 'Several processes: how many.')
flags.DEFINE_integer('process_id', None, 'Several processes: this one, from 0.')
FLAGS = flags.FLAGS
PROJECT_DIR = str(Path(__file__).resolve().parent)


def run(mode: str) -> int:
  """Runs one mode; returns the exit status."""
  if mode in ('train', 'benchmark', 'sweep', 'check') and FLAGS.config is None:
    raise UserError(f'--mode={mode} needs --config, e.g. --config=configs/default.py.')
  if mode in ('eval', 'predict', 'export') and FLAGS.workdir is None:
    raise UserError(f'--mode={mode} needs --workdir, the directory of a training run.')
  devices.initialize_distributed(
    FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id, auto=FLAGS.distributed
  )
  uses_saved_config = mode in ('eval', 'predict', 'export')
  devices.configure_runtime(
    configuration.load(FLAGS.workdir) if uses_saved_config else FLAGS.config
  )
  logging.info(
    'JAX %s, backend %s, process %d of %d, %d devices: %s',
    jax.__version__,
    jax.default_backend(),
    jax.process_index(),
    jax.process_count(),
    jax.device_count(),
    jax.devices(),
  )
  if mode == 'train':
    from mlp import train

    config_name = Path(config_flags.get_config_filename(FLAGS['config'])).stem
    workdir = FLAGS.workdir or train.default_workdir(config_name)
    logging.info('Workdir: %s', workdir)
    train.train_and_evaluate(FLAGS.config, workdir)
  elif mode == 'eval':
    from mlp import train

    train.evaluate_checkpoint(FLAGS.workdir)
  elif mode == 'benchmark':
    from mlp import benchmark

    benchmark.run(FLAGS.config, FLAGS.workdir and Path(FLAGS.workdir))
  elif mode == 'predict':
    from mlp import predict

    return predict.run(FLAGS.workdir, FLAGS.image, FLAGS.output, FLAGS.save_preprocessed)
  elif mode == 'export':
    from mlp import export

    export.run(FLAGS.workdir)
  elif mode == 'sweep':
    from mlp import sweep

    sweep.run(FLAGS.config, FLAGS.workdir)
  elif mode == 'check':
    from mlp import accelerator_check

    return accelerator_check.run(FLAGS.config)
  return 0


class _OwnInfoOnly(std_logging.Filter):
  """Keeps libraries' INFO chatter (orbax, jax) off the console; their warnings still show."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    path = record.pathname
    own = path.startswith(PROJECT_DIR) and 'site-packages' not in path
    return own or record.levelno >= std_logging.WARNING


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, plus a one-line error for a config field that does not exist."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as error:  # What ml_collections raises for an unknown field.
    name, _, hint = str(error).replace('\\n', '\n').replace("\\'", '').strip('\'"').partition('\n')
    sys.stderr.write(f'FATAL Flags parsing error: unknown config field {name}. {hint}\n')
    sys.exit(1)


def main(argv: list[str]) -> None:
  logging.get_absl_handler().addFilter(_OwnInfoOnly())
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  try:
    sys.exit(run(FLAGS.mode))
  except UserError as error:
    logging.error('%s', error)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
