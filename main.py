"""Trains, benchmarks and uses an image classifier: `python main.py --config=configs/default.py`."""

from mlp.machinery import stopping

# First of all: a signal during the imports below is one line and 130 or 143 too (a library's
# import swallowed a plain KeyboardInterrupt there, and the run went on).
stopping.exit_on_signals()

import dataclasses
import logging as std_logging
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from input_pipeline.errors import UserError
from mlp.machinery import faults

config_flags.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py).')
flags.DEFINE_string('workdir', None, 'Run directory; train: default a new one under ./runs/.')
flags.DEFINE_string('mode', 'train', 'What to do; see the table in `python main.py --help`.')
flags.DEFINE_multi_string('image', [], 'predict: an image file or a directory of images.')
flags.DEFINE_enum('output', 'text', ['text', 'json'], 'predict: output format on stdout.')
flags.DEFINE_string('save_preprocessed', None, 'predict: directory for the model inputs.')
flags.DEFINE_string('export_file', None, 'export: where to write; default <workdir>.jax.')
flags.DEFINE_bool('overwrite', False, 'export: replace an existing --export_file.')
flags.DEFINE_integer(
  'port', 8000, 'serve: the TCP port; 0 picks a free one.', lower_bound=0, upper_bound=65535
)
flags.DEFINE_string(
  'host', '127.0.0.1', 'serve: the address to listen on; 0.0.0.0 exposes the model to your network.'
)
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
DISTRIBUTED_FLAGS = ('distributed', 'coordinator_address', 'num_processes', 'process_id')


MAX_NAME = 150  # Characters of a run's name before its time; file names may have 255.


def run_name(argv: list[str]) -> str:
  """The config file's name and the fields overridden on the command line, for a new workdir.

  'default-optim.batch_size=50': a run is not named after a config that no longer describes it.
  Fields that only say how to run (data.dir, run.*) leave the results alone and the name too.
  """
  from mlp.core import configuration
  from mlp.core.fields import Role

  config_name = Path(config_flags.get_config_filename(FLAGS['config'])).stem
  overrides = [a.removeprefix('--config.') for a in argv if a.startswith('--config.')]
  values = dict(o.partition('=')[::2] for o in overrides)  # parse_flags refuses repeats.
  roles = {path: field.role for path, field in configuration.SCHEMA.items()}
  kept = [
    f'{p}={v}' for p, v in sorted(values.items()) if roles.get(p, Role.EXECUTION) != Role.EXECUTION
  ]
  name = '-'.join([config_name, *kept])
  return re.sub(r'[^A-Za-z0-9._=,+-]', '_', name)[:MAX_NAME]


def default_workdir(config_name: str) -> Path:
  return Path('runs') / f'{config_name}-{time.strftime("%Y%m%d-%H%M%S")}'


def _train() -> int:
  from mlp.core import train
  from mlp.machinery import files, lock

  workdir = FLAGS.workdir or default_workdir(run_name(sys.argv[1:]))
  logging.info('Workdir: %s', workdir)
  with lock.left_as_found(files.path(workdir)):
    train.train_and_evaluate(FLAGS.config, workdir)
  return 0


def _eval() -> int:
  from mlp.core import train

  train.evaluate_checkpoint(FLAGS.workdir)
  return 0


def _benchmark() -> int:
  from mlp.tools import benchmark

  benchmark.run(FLAGS.config, FLAGS.workdir and Path(FLAGS.workdir))
  return 0


def _predict() -> int:
  from mlp.reader import predict

  return predict.run(FLAGS.workdir, FLAGS.image, FLAGS.output, FLAGS.save_preprocessed)


def _export() -> int:
  from mlp.reader import export

  export.run(FLAGS.workdir, FLAGS.export_file, FLAGS.overwrite)
  return 0


def _check() -> int:
  from mlp.tools import accelerator_check

  return accelerator_check.run(FLAGS.config)


def _serve() -> int:
  from mlp.reader import serve

  return serve.run(FLAGS.workdir, FLAGS.host, FLAGS.port)


def _print_config() -> int:
  """Every field as `path = value  # what it is for`, after the checks a run makes."""
  from mlp.core import configuration
  from mlp.tools import fields

  configuration.validate(FLAGS.config)
  declared = configuration.SCHEMA | {
    p: f for g in fields.GROUPS for p, f in fields.paths(g).items()
  }

  def lines(values: dict, prefix: str = ''):
    for name, value in values.items():
      path = prefix + name
      if isinstance(value, dict) and value:
        yield from lines(value, path + '.')
      else:
        doc = declared[path].doc if path in declared else ''
        yield f'{path} = {value!r}' + (f'  # {doc}' if doc else '')

  print('\n'.join(lines(FLAGS.config.to_dict())))
  return 0


def _sweep() -> int:
  from mlp.tools import sweep

  sweep.run(FLAGS.config, FLAGS.workdir)
  return 0


@dataclasses.dataclass(frozen=True)
class Mode:
  """One way to run main.py: its function, what it reads, and the flags that are its own."""

  run: Callable[[], int]
  help: str
  reads: str  # 'config': --config is required; 'workdir': a trained --workdir is required.
  flags: tuple[str, ...] = ()
  uses_devices: bool = True  # False: runs before JAX starts.


MODES = {
  'train': Mode(_train, 'train, or resume in --workdir', 'config', DISTRIBUTED_FLAGS),
  'eval': Mode(_eval, 'validation and test metrics of the latest checkpoint', 'workdir'),
  'benchmark': Mode(_benchmark, 'time training steps', 'config', DISTRIBUTED_FLAGS),
  'predict': Mode(
    _predict, 'classify image files', 'workdir', ('image', 'output', 'save_preprocessed')
  ),
  'export': Mode(
    _export, 'write a standalone jax.export model', 'workdir', ('export_file', 'overwrite')
  ),
  'serve': Mode(_serve, 'a web page and JSON API over the run', 'workdir', ('port', 'host')),
  'sweep': Mode(_sweep, 'tune (--config=configs/sweep.py)', 'config'),
  'check': Mode(_check, 'what matters on a new GPU/TPU machine, one table', 'config'),
  'config': Mode(_print_config, 'print the resolved config, every field', 'config', (), False),
}
FLAGS['mode'].help = 'One of: ' + '; '.join(f'{n}: {m.help}' for n, m in MODES.items()) + '.'


def check_flags(mode_name: str) -> Mode:
  """The mode, once the flags given fit it; a UserError names the first that does not."""
  mode = MODES.get(mode_name)
  if mode is None:
    raise UserError(f'--mode={mode_name} is not a mode; use one of {", ".join(MODES)}.')
  for name in sorted({f for m in MODES.values() for f in m.flags} - set(mode.flags)):
    if FLAGS[name].present:
      owners = ', '.join(n for n, m in MODES.items() if name in m.flags)
      raise UserError(f'--{name} is a flag of --mode={owners}, not of --mode={mode_name}.')
  if mode.reads == 'config' and FLAGS.config is None:
    raise UserError(f'--mode={mode_name} needs --config, e.g. --config=configs/default.py.')
  if mode.reads == 'workdir':
    if FLAGS.workdir is None:
      raise UserError(f'--mode={mode_name} needs --workdir, the directory of a training run.')
    if FLAGS['config'].present:
      raise UserError(f'--mode={mode_name} reads the config saved in --workdir; drop --config.')
  return mode


def load_saved(workdir: str):
  """The config saved in workdir, checked as a new one is: config.json may be hand-edited."""
  from mlp.core import configuration
  from mlp.machinery import files, run_config

  config = run_config.load(workdir)
  try:
    configuration.validate(config)
  except Exception as error:  # A value of a wrong type makes the checks themselves raise.
    message = str(error).removeprefix('Invalid config: ')
    raise UserError(
      f'{files.path(workdir) / run_config.CONFIG_FILE}: {message}; fix that value or train '
      'into a new workdir.'
    ) from None
  return config


def run(mode_name: str) -> int:
  """Runs one mode; returns the exit status."""
  mode = check_flags(mode_name)
  if not mode.uses_devices:
    return mode.run()
  import jax

  from mlp.core import configuration
  from mlp.machinery import devices, limits

  devices.initialize_distributed(
    FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id, auto=FLAGS.distributed
  )
  config = load_saved(FLAGS.workdir) if mode.reads == 'workdir' else FLAGS.config
  configuration.validate(config)
  devices.configure_runtime(config)
  if mode_name != 'sweep':  # A sweep's trials are checked one by one.
    limits.check(config)
  logging.info(
    'JAX %s, backend %s, process %d of %d, %d devices: %s',
    jax.__version__,
    jax.default_backend(),
    jax.process_index(),
    jax.process_count(),
    jax.device_count(),
    jax.devices(),
  )
  return mode.run()


# Libraries' notes that repeat what this code reports in its own line, or that no user acts on:
# orbax's warning on every read-only open (eval, predict, export, serve) and its error on each
# damaged metadata file; tfds's advice to install OpenCV for decoding (once, into a cache).
# A failed save: orbax's threads each log the error that this code then reports in one line.
LIBRARY_ECHOES = (
  'directory is read only',
  'Failed to json parse',
  'OpenCV is not installed',
  'raised an exception: ',
  'Handler Commit operations',
  'Save Finalize thread',
)


class _OwnInfoOnly(std_logging.Filter):
  """Keeps libraries' INFO chatter (orbax, jax) off the console; their warnings still show."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    path = record.pathname
    own = path.startswith(PROJECT_DIR) and 'site-packages' not in path
    if not own and any(echo in record.getMessage() for echo in LIBRARY_ECHOES):
      return False
    return own or record.levelno >= std_logging.WARNING


def _flag_error(message: str) -> None:
  sys.stderr.write(f'FATAL Flags parsing error: {message}\n')
  sys.exit(1)


def _config_file_error(error: Exception) -> str:
  """One line for a config file that does not load: where it broke, and how."""
  if isinstance(error, SyntaxError):
    return f'{error.filename}, line {error.lineno}: {error.msg}; fix the config file.'
  lines = [line.strip() for line in str(error).replace('\\n', '\n').splitlines() if line.strip()]
  if 'Traceback (most recent call last):' in lines:  # ml_collections quotes the file's error.
    lines = [lines[0], lines[-1]]
  return ' '.join(lines)


def moved_to(name: str) -> str | None:
  """The path of a field whose old, flat spelling was name (batch_size -> optim.batch_size)."""
  from mlp.core.configuration import SCHEMA

  for path in SCHEMA:
    group, _, field = path.rpartition('.')
    if group and name in (field, f'{group}_{field}'):
      return path
  return {'dataset': 'data.name'}.get(name)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with one-line errors for config files and fields that do not work.

  A config file is Python and runs here, while the flags are parsed, in every mode; --help
  and --helpshort print the usage first, without reading it.
  """
  if {'--help', '-h', '-?', '--helpshort'} & set(argv[1:]):
    print(usage())
    sys.exit(0)
  config_arg = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
  if config_arg is not None and not Path(config_arg.partition(':')[0]).is_file():
    configs = sorted(p.name for p in Path(PROJECT_DIR, 'configs').glob('[!_]*.py'))
    _flag_error(
      f'--config={config_arg}: no such file; use one of configs/{", configs/".join(configs)}.'
    )
  _refuse_repeated(argv)
  try:
    remaining = FLAGS(argv)
  except flags.Error as error:
    _flag_error(_config_file_error(error))
  except (AttributeError, KeyError) as error:  # What ml_collections raises for an unknown field.
    if "has no attribute 'get_config'" in str(error):
      _flag_error(
        f'--config={config_arg}: the file defines no get_config(); define one that '
        'returns an ml_collections.ConfigDict, as configs/default.py does.'
      )
    name, _, hint = str(error).replace('\\n', '\n').replace("\\'", '').strip('\'"').partition('\n')
    field = name.split("'")[1] if "'" in name else name
    new = moved_to(field)
    hint = f'It is now {new}: --config.{new}=...' if new else hint
    _flag_error(f'unknown config field {name}. {hint}')
  except Exception as error:  # A config file that raises, or does not compile.
    _flag_error(_config_file_error(error))
  if FLAGS.config is not None and not isinstance(FLAGS.config, ml_collections.ConfigDict):
    _flag_error(
      f'{config_flags.get_config_filename(FLAGS["config"])}: get_config() returned '
      f'{FLAGS.config!r:.40}, not an ml_collections.ConfigDict; return one, as '
      'configs/default.py does.'
    )
  return remaining


def _refuse_repeated(argv: list[str]) -> None:
  """A --config.<field> given twice is refused: absl merges a tuple's values or keeps one, and
  the run's name says the last."""
  names = [a.partition('=')[0] for a in argv[1:] if a.startswith('--config.')]
  repeated = sorted({name for name in names if names.count(name) > 1})
  if repeated:
    _flag_error(f'{repeated[0]} is given {names.count(repeated[0])} times; give it once.')


def usage() -> str:
  """--help: the modes, the config groups and an override, then where the rest is."""
  from mlp.core import configuration

  modes = [f'  {name:<10}{mode.help} (needs --{mode.reads})' for name, mode in MODES.items()]
  groups = [
    f'  {group or "(top)":<10}{", ".join(fields)}' for group, fields in configuration.GROUPS.items()
  ]
  return '\n'.join(
    [
      (__doc__ or '').strip(),
      '',
      'Usage: python main.py --config=configs/<name>.py [--config.<group>.<field>=<value> ...]',
      '                      [--mode=<mode>] [--workdir=<dir>]',
      '',
      'Modes (--mode=...):',
      *modes,
      '',
      'Config groups and fields (mlp/core/configuration.py declares, configs/default.py sets):',
      *groups,
      '',
      'Every field and its value: python main.py --config=configs/<name>.py --mode=config',
      'Example: python main.py --config=configs/default.py --config.optim.batch_size=50 \\',
      '           --config.mlp.hidden_sizes=128,64 --config.optim.num_epochs=3',
      'Every flag: python main.py --helpfull',
    ]
  )


def failure_status(error: BaseException) -> int | None:
  """Logs one line for an error a user can act on and returns the exit status; None: a bug."""
  if isinstance(error, stopping.Stopped):
    logging.warning('%s', error)
    return error.exit_status
  status = stopping.exit_status()
  if status is not None or isinstance(error, KeyboardInterrupt):
    name = signal.Signals(stopping.received[0]).name if stopping.received else 'SIGINT'
    if FLAGS.is_parsed():
      logging.error('Stopped by %s; checkpoints written so far are kept.', name)
    else:  # absl would first warn that it logs before the flags are parsed: a second line.
      sys.stderr.write(f'Stopped by {name} while starting; nothing was written.\n')
    return status or stopping.EXIT_STATUS[signal.SIGINT]
  translated = faults.translate(error)
  if translated is not None:
    logging.error('%s', translated)
    return 1
  return None


def main(argv: list[str]) -> None:
  logging.get_absl_handler().addFilter(_OwnInfoOnly())
  if stopping.received:  # A signal whose exception something swallowed on its way up.
    raise stopping.Interrupted(stopping.received[0])
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  try:
    status = run(FLAGS.mode)
  except Exception as error:
    status = failure_status(error)
    if status is None:
      raise
  except KeyboardInterrupt as error:  # Interrupted too: a signal outside training.
    status = failure_status(error)
  stopping.finishing()
  sys.exit(status)


def start() -> None:
  """app.run, with one line and the signal's status for a signal at any moment."""
  stopping.exit_on_signals()
  try:
    app.run(main, flags_parser=parse_flags)
  except KeyboardInterrupt as error:  # While the flags (and config files) are parsed.
    sys.exit(failure_status(error))


if __name__ == '__main__':
  start()
