"""The input pipeline: splits, the fixed validation set, batching and missing data."""

import numpy as np
import pytest

import input_pipeline
from input_pipeline.errors import UserError

pytestmark = pytest.mark.unit


def synthetic(n: int) -> input_pipeline.Split:
  images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1) * np.ones((1, 28, 28, 1), np.uint8)
  return input_pipeline.Split(images, np.arange(n, dtype=np.int32), tuple('0123456789'))


def test_validation_is_fixed_disjoint_and_depends_on_data_seed():
  train = synthetic(1000)
  rest, validation = input_pipeline.split_off_validation(train, 0.1, data_seed=0)
  again_rest, again = input_pipeline.split_off_validation(train, 0.1, data_seed=0)
  _, other = input_pipeline.split_off_validation(train, 0.1, data_seed=1)
  assert len(validation) == 100 and len(rest) == 900
  assert not set(validation.labels) & set(rest.labels)
  assert set(validation.labels) | set(rest.labels) == set(range(1000))
  np.testing.assert_array_equal(validation.labels, again.labels)
  np.testing.assert_array_equal(rest.labels, again_rest.labels)
  assert set(validation.labels) != set(other.labels)


def test_padded_batches_keep_every_example_once():
  images, labels, mask = input_pipeline.padded_batches(synthetic(23), batch_size=5)
  assert images.shape == (5, 5, 28, 28, 1) and labels.shape == mask.shape == (5, 5)
  assert mask.sum() == 23
  assert sorted(labels[mask].tolist()) == list(range(23))


def test_missing_data_names_the_directory_and_where_a_copy_can_come_from(tmp_path):
  with pytest.raises(UserError, match=str(tmp_path / 'empty')) as error:
    input_pipeline.load_split('mnist', 'train', str(tmp_path / 'empty'), tmp_path, download=False)
  message = str(error.value)
  assert '--config.data.dir' in message and 'TFDS_DATA_DIR' in message
  assert 'an array_record copy needs no TensorFlow' in message


def test_epoch_order_visits_every_example_once_and_changes_per_epoch():
  indices, mask = input_pipeline.epoch_order(103, 10, data_seed=0, epoch=1)
  assert indices.shape == mask.shape == (11, 10) and mask.sum() == 103
  assert sorted(indices[mask].tolist()) == list(range(103))
  again, _ = input_pipeline.epoch_order(103, 10, data_seed=0, epoch=1)
  next_epoch, _ = input_pipeline.epoch_order(103, 10, data_seed=0, epoch=2)
  other_seed, _ = input_pipeline.epoch_order(103, 10, data_seed=1, epoch=1)
  np.testing.assert_array_equal(indices, again)
  assert not np.array_equal(indices, next_epoch) and not np.array_equal(indices, other_seed)
