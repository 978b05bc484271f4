"""What only real MNIST can show: the notebook's split sizes and accuracy, both file formats
agreeing, the cache, and a killed run resumed bit-exactly. CI has the data (../shared)."""

import json
import signal
import time

import jax
import numpy as np
import pytest
from test_checkpoint import cli_train, finished_checkpoints
from test_mnist_files import FIRST_ORIGINAL_TEST_LABELS, tfds_order, write_idx
from test_train import read_metrics

import input_pipeline
from input_pipeline import mnist_files
from mlp.machinery import checkpoint, reporting

pytestmark = pytest.mark.slow


def test_real_splits_have_the_notebook_sizes(real_config):
  splits = input_pipeline.load_splits(real_config)
  assert (len(splits.train), len(splits.validation), len(splits.test)) == (54000, 6000, 10000)
  assert splits.train.images.shape[1:] == (28, 28, 1)
  assert splits.train.images.dtype == np.uint8 and splits.train.labels.dtype == np.int32
  assert set(np.unique(splits.test.labels)) == set(range(10))


def test_array_record_without_tensorflow_matches_tfrecord(real_config, array_record_dir, tmp_path):
  from_tfrecord = input_pipeline.load_split('mnist', 'test', real_config.data.dir, tmp_path / 'a')
  from_array_record = input_pipeline.load_split('mnist', 'test', str(array_record_dir), tmp_path)
  np.testing.assert_array_equal(from_tfrecord.images, from_array_record.images)
  np.testing.assert_array_equal(from_tfrecord.labels, from_array_record.labels)


def test_cache_is_written_atomically_and_reused(real_config, array_record_dir, tmp_path):
  first = input_pipeline.load_split('mnist', 'test', str(array_record_dir), tmp_path)
  cached = list((tmp_path / 'data').iterdir())
  assert [p.suffix for p in cached] == ['.npz'] and 'mnist-3.0.1-test' in cached[0].name
  again = input_pipeline.load_split('mnist', 'test', str(array_record_dir), tmp_path)
  np.testing.assert_array_equal(first.images, again.images)


def test_default_config_reaches_the_notebook_accuracy(trained_mnist_workdir):
  metrics = read_metrics(trained_mnist_workdir)
  assert len(metrics) == 11
  assert metrics[-1]['test_accuracy'] >= 0.965
  assert jax.device_count() >= 1


def test_original_files_give_the_arrays_of_the_prepared_dataset(real_test_split, tmp_path):
  """Rebuilds t10k's files from the prepared test split and reads them back in tfds's order."""
  order = tfds_order('test', len(real_test_split))
  original_images = np.empty_like(real_test_split.images[..., 0])
  original_labels = np.empty_like(real_test_split.labels)
  original_images[order], original_labels[order] = (
    real_test_split.images[..., 0],
    real_test_split.labels,
  )
  assert original_labels[:10].tolist() == FIRST_ORIGINAL_TEST_LABELS  # The order is tfds's.
  images, labels = mnist_files.decode(
    'test',
    write_idx(tmp_path / 'images.gz', original_images),
    write_idx(tmp_path / 'labels.gz', original_labels),
  )
  np.testing.assert_array_equal(images, real_test_split.images)
  np.testing.assert_array_equal(labels, real_test_split.labels)


def test_sigkill_after_first_checkpoint_then_resume_matches_uninterrupted(tmp_path, real_cache_dir):
  straight = cli_train(tmp_path / 'straight', real_cache_dir)
  assert straight.wait(timeout=300) == 0, straight.stderr.read()

  killed = cli_train(tmp_path / 'killed', real_cache_dir)
  deadline = time.time() + 240
  while not finished_checkpoints(tmp_path / 'killed') and time.time() < deadline:
    time.sleep(0.005)
  assert killed.poll() is None, 'the run ended before it could be killed'
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  assert killed.returncode == -signal.SIGKILL
  records = (tmp_path / 'killed' / 'metrics.jsonl').read_text().splitlines()
  assert 'test_loss' not in records[-1]

  resumed = cli_train(tmp_path / 'killed', real_cache_dir)
  _, stderr = resumed.communicate(timeout=300)
  assert resumed.returncode == 0, stderr
  assert 'Restored checkpoint' in stderr

  def numbers(workdir):
    lines = [json.loads(x) for x in (workdir / 'metrics.jsonl').read_text().splitlines()]
    return [{k: v for k, v in x.items() if k not in reporting.TIMINGS} for x in lines]

  assert numbers(tmp_path / 'killed') == numbers(tmp_path / 'straight')
  *_, resumed_params = checkpoint.restore_for_inference(tmp_path / 'killed')
  *_, straight_params = checkpoint.restore_for_inference(tmp_path / 'straight')
  for a, b in zip(jax.tree.leaves(resumed_params), jax.tree.leaves(straight_params), strict=True):
    np.testing.assert_array_equal(a, b)
