"""Shared test setup: tiers, tiny configs, mocked tfds datasets and where the real MNIST is.

Tiers (markers): `unit` is the one-minute inner loop (pure functions, one contract test per
model and per dataset, the one shared mock run); `integration` runs real programs,
subprocesses and faults; `slow` needs real MNIST, the browser or the notebook. A module states
its tier with `pytestmark`; a test that uses real data is slow whatever its module says.
XLA's optimisations are off in tests, as in flax's own, and one compilation cache serves the
whole session and the subprocesses it starts.
"""

import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import pytest

from input_pipeline import DIGITS, DatasetInfo
from mlp.core import configuration
from mlp.machinery import stopping
from mlp.tools import fields as tool_fields

# Pytest's own process never starts the stop watchdog (importing main.py would): a signal a
# test sends itself must not end the session. Tests of the watchdog run main.py in a process.
stopping._watchdog.set()

ROOT = Path(__file__).resolve().parents[1]
# Real MNIST as CI and developers have it beside the checkout (docs/data.md); TFDS_DATA_DIR,
# where set, points the real-data tests at another copy. The two tests that compare or need
# the array_record format read it from TFDS_ARRAY_RECORD_DIR, else ../shared.
SHARED = ROOT.parent / 'shared'
TFRECORD_DIR = Path(os.environ.get('TFDS_DATA_DIR') or SHARED / 'tensorflow_datasets')
ARRAY_RECORD_DIR = Path(
  os.environ.get('TFDS_ARRAY_RECORD_DIR') or SHARED / 'tensorflow_datasets_array_record'
)
MNIST_INFO = DatasetInfo('mnist', (28, 28, 1), DIGITS)


def require_data(path: Path) -> Path:
  """A copy of MNIST a test reads: where it is absent the test skips and says why, but in CI
  (CI=true) it fails, so that a missing copy never passes as green."""
  if not (path / 'mnist').is_dir():
    message = (
      f'needs a prepared MNIST in {path} (docs/data.md); set TFDS_DATA_DIR or '
      'TFDS_ARRAY_RECORD_DIR to another copy'
    )
    if os.environ.get('CI') == 'true':
      pytest.fail(message)
    pytest.skip(message)
  return path


@pytest.fixture
def array_record_dir() -> Path:
  return require_data(ARRAY_RECORD_DIR)


REAL_DATA_FIXTURES = {
  'array_record_dir',
  'real_cache_dir',
  'real_config',
  'real_test_split',
  'trained_mnist_workdir',
  'trained_reader_workdir',
}
TIERS = {
  'unit': 'the quick tier: pure functions and contracts, no data copy, under a minute',
  'integration': 'real programs: training runs, subprocesses, servers, faults',
  'slow': 'real MNIST, the browser or the notebook',
}
# Compiled programs shared by this session and the main.py processes it starts.
COMPILATION_CACHE = Path(tempfile.gettempdir()) / 'mnist-jax-test-compilation-cache'
for name, value in {
  'JAX_DISABLE_MOST_OPTIMIZATIONS': 'true',
  'JAX_COMPILATION_CACHE_DIR': str(COMPILATION_CACHE),
  'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
  'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0',
}.items():
  os.environ.setdefault(name, value)
jax.config.update('jax_disable_most_optimizations', True)
jax.config.update('jax_compilation_cache_dir', os.environ['JAX_COMPILATION_CACHE_DIR'])
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def pytest_configure(config):
  for name, doc in TIERS.items():
    config.addinivalue_line('markers', f'{name}: {doc}')


def pytest_collection_modifyitems(items):
  """Every test on real MNIST is slow; a test with no tier is integration. Modules with a slow
  test run first, so that CI's workers (pytest -n 2 --dist loadfile) start the longest early
  and end together."""
  for item in items:
    if REAL_DATA_FIXTURES & set(getattr(item, 'fixturenames', ())):
      if item.get_closest_marker('unit'):
        raise pytest.UsageError(f'{item.nodeid} reads real MNIST: move it out of the unit tier.')
      item.add_marker(pytest.mark.slow)
    elif not any(item.get_closest_marker(name) for name in TIERS):
      item.add_marker(pytest.mark.integration)
  slow_modules = {item.path for item in items if item.get_closest_marker('slow')}
  items.sort(key=lambda item: item.path not in slow_modules)


def run_main(
  *args: str, cwd=None, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
  """main.py in a subprocess, as a user runs it; stdout and stderr captured as text.

  env adds to this process's environment (which disables XLA's optimisations, as tests do).
  """
  return subprocess.run(
    [sys.executable, str(ROOT / 'main.py'), *args],
    capture_output=True,
    text=True,
    timeout=timeout,
    cwd=cwd,
    env={**os.environ, **(env or {})},
  )


def tiny_config(tmp_path: Path, overrides: dict | None = None):
  """The default config shrunk to seconds: small model, small batches, one epoch, no caches.

  overrides maps dotted paths to values: {'optim.num_epochs': 2}.
  """
  config = configuration.defaults(tool_fields.GROUPS)
  values = {
    'mlp.hidden_sizes': (16,),
    'cnn.conv_features': (4, 8),  # Optional per model: a new one trains at its default size.
    'cnn.dense_size': 16,
    'resnet.stage_widths': (4, 8),
    'optim.batch_size': 10,
    'run.eval_batch_size': 7,  # Divides neither split: padding and masking are exercised.
    'optim.num_epochs': 1,
    'data.dir': str(tmp_path / 'tfds'),
    'run.cache_dir': str(tmp_path / 'cache'),
    'run.compilation_cache': False,  # The session's cache (above) serves instead.
    'run.pictures': False,  # Drawn only by the tests that check pictures.
    'run.steps_per_call': 1000,  # Whole epochs, unmeasured: pacing has tests of its own.
    **(overrides or {}),
  }
  for path, value in values.items():
    configuration.assign(config, path, value)
  return config


def prepare_mock(data_dir: Path, name: str) -> None:
  """Writes tfds metadata of a dataset (from tfds code, no download): it reads as prepared."""
  import tensorflow_datasets as tfds

  builder = tfds.builder(name, data_dir=str(data_dir))
  prepared = data_dir / name / str(builder.info.version)
  prepared.mkdir(parents=True, exist_ok=True)
  builder.info.write_to_directory(str(prepared))


@contextlib.contextmanager
def mocked_splits():
  """While active, tfds names load random examples of that dataset's shapes; no network.

  The mock is active only while a split loads: it also redirects etils paths, which orbax
  uses, so checkpoints written under it would land elsewhere.
  """
  import tensorflow_datasets as tfds

  import input_pipeline

  load_split = input_pipeline.load_split

  def mocked(*args, **kwargs):
    with tfds.testing.mock_data(num_examples=60):
      return load_split(*args, **kwargs)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(input_pipeline, 'load_split', mocked)
    yield


@pytest.fixture
def mock_dataset(tmp_path):
  """Mocked splits; calling it with a tfds name writes that dataset's metadata into
  tiny_config's data dir, so it reads as prepared and nothing tries to download."""
  with mocked_splits():
    yield lambda name: prepare_mock(tmp_path / 'tfds', name)


@pytest.fixture
def mock_mnist(mock_dataset):
  mock_dataset('mnist')


@pytest.fixture(scope='session')
def mock_trained_workdir(tmp_path_factory) -> Path:
  """One tiny MLP trained 2 epochs on mock MNIST, shared by the tests that only read a run.

  Its data dir holds mock metadata: a test that loads its data uses the mock_dataset fixture.
  """
  from mlp.core import train

  base = tmp_path_factory.mktemp('mock_trained')
  prepare_mock(base / 'tfds', 'mnist')
  with mocked_splits():
    train.train_and_evaluate(tiny_config(base, {'optim.num_epochs': 2}), base / 'run')
  return base / 'run'


@pytest.fixture(scope='session')
def real_cache_dir(tmp_path_factory) -> Path:
  """One decoded-data cache for the whole session, never the user's."""
  return tmp_path_factory.mktemp('real_cache')


@pytest.fixture(scope='session')
def real_config(real_cache_dir):
  """The default config on the real MNIST that CI and developers have in ../shared."""
  config = configuration.defaults()
  config.data.dir = str(require_data(TFRECORD_DIR))
  config.run.cache_dir = str(real_cache_dir)
  config.run.compilation_cache = False
  return config


@pytest.fixture(scope='session')
def trained_mnist_workdir(tmp_path_factory, real_config) -> Path:
  """A workdir of the default config trained on real MNIST by the command a user runs, with
  XLA's optimisations on: shared by the tests that need a real model."""
  return _trained_on_real_mnist(tmp_path_factory, real_config, 'default')


@pytest.fixture(scope='session')
def trained_reader_workdir(tmp_path_factory, real_config) -> Path:
  """A workdir of configs/reader.py trained on real MNIST (about 5 minutes on 2 cores), or
  the one READER_WORKDIR names (a run of that config trained before)."""
  if os.environ.get('READER_WORKDIR'):
    return Path(os.environ['READER_WORKDIR'])
  # One step a call, as pacing chooses for a CNN on a CPU, without its one-time measurement (on
  # CI's critical path); how a run is paced never changes its numbers.
  return _trained_on_real_mnist(
    tmp_path_factory, real_config, 'reader', '--config.run.steps_per_call=1'
  )


def _trained_on_real_mnist(tmp_path_factory, real_config, config_name: str, *flags) -> Path:
  """configs/<config_name>.py trained by the command a user runs, XLA's optimisations on."""
  workdir = tmp_path_factory.mktemp(f'trained_{config_name}') / 'run'
  result = run_main(
    f'--config={ROOT / "configs" / f"{config_name}.py"}',
    f'--workdir={workdir}',
    f'--config.data.dir={real_config.data.dir}',
    f'--config.run.cache_dir={real_config.run.cache_dir}',
    *flags,
    env={'JAX_DISABLE_MOST_OPTIMIZATIONS': 'false'},
    timeout=1200,  # The reader: 4.3 minutes alone, much more beside the other tests.
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


@pytest.fixture(scope='session')
def real_test_split(real_config):
  import input_pipeline

  return input_pipeline.load_split('mnist', 'test', real_config.data.dir, real_config.run.cache_dir)
