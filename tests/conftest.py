"""Shared test setup: tiny configs, mocked MNIST and where the real one is."""

import os
from pathlib import Path

import pytest

from configs import default

ROOT = Path(__file__).resolve().parents[1]
# Real MNIST as CI and developers have it beside the checkout (see README); TFDS_DATA_DIR,
# where set, points the real-data tests at another copy.
SHARED = ROOT.parent / 'shared'
TFRECORD_DIR = SHARED / 'tensorflow_datasets'
ARRAY_RECORD_DIR = SHARED / 'tensorflow_datasets_array_record'


def tiny_config(tmp_path: Path, **overrides):
  """The default config shrunk to seconds: small model, small batches, one epoch, no caches."""
  config = default.get_config()
  config.unlock()
  config.update(
    hidden_sizes=(16,),
    batch_size=10,
    eval_batch_size=7,  # Divides neither split: padding and masking are exercised.
    num_epochs=1,
    data_dir=str(tmp_path / 'tfds'),
    cache_dir=str(tmp_path / 'cache'),
    compilation_cache=False,
  )
  config.update(overrides)
  config.lock()
  return config


@pytest.fixture
def mock_mnist(monkeypatch, tmp_path):
  """tfds.testing.mock_data serving random MNIST-shaped examples; no network.

  tiny_config's data_dir gets the real dataset's metadata, so it reads as prepared and nothing
  tries to download. The mock is active only while a split loads: it also redirects etils
  paths, which orbax uses, so checkpoints written under it would land elsewhere.
  """
  import shutil

  import tensorflow_datasets as tfds

  import input_pipeline

  prepared = tmp_path / 'tfds' / 'mnist' / '3.0.1'
  prepared.mkdir(parents=True)
  for name in ('dataset_info.json', 'features.json'):
    shutil.copy(ARRAY_RECORD_DIR / 'mnist' / '3.0.1' / name, prepared)
  load_split = input_pipeline.load_split

  def mocked(*args, **kwargs):
    with tfds.testing.mock_data(num_examples=60):
      return load_split(*args, **kwargs)

  monkeypatch.setattr(input_pipeline, 'load_split', mocked)


@pytest.fixture(scope='session')
def real_cache_dir(tmp_path_factory) -> Path:
  """One decoded-data cache for the whole session, never the user's."""
  return tmp_path_factory.mktemp('real_cache')


@pytest.fixture(scope='session')
def real_config(real_cache_dir):
  """The default config on the real MNIST that CI and developers have in ../shared."""
  config = default.get_config()
  config.data_dir = os.environ.get('TFDS_DATA_DIR') or str(TFRECORD_DIR)
  config.cache_dir = str(real_cache_dir)
  config.compilation_cache = False
  return config


@pytest.fixture(scope='session')
def trained_mnist_workdir(tmp_path_factory, real_config) -> Path:
  """A workdir of the default config trained on real MNIST, shared by the tests that need one."""
  from mlp import train

  workdir = tmp_path_factory.mktemp('trained_default')
  train.train_and_evaluate(real_config, workdir)
  return workdir


@pytest.fixture(scope='session')
def real_test_split(real_config):
  import input_pipeline

  return input_pipeline.load_split('mnist', 'test', real_config.data_dir, real_config.cache_dir)
