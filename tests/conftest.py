"""Shared test setup: tiny configs, mocked MNIST and where the real one is."""

from pathlib import Path

import pytest

from configs import default

ROOT = Path(__file__).resolve().parents[1]
# Real MNIST as CI and developers have it beside the checkout (see README).
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
    data_dir=str(tmp_path / 'no_tfds_data'),
    cache_dir=str(tmp_path / 'cache'),
    compilation_cache=False,
  )
  config.update(overrides)
  config.lock()
  return config


@pytest.fixture
def mock_mnist():
  """tfds.testing.mock_data serving random MNIST-shaped examples; no files, no network."""
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=60):
    yield
