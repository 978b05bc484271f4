"""The metrics sink read back from metrics.jsonl and the event files; the pictures as images."""

import json
import logging
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tensorboardX.proto.event_pb2 import Event
from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

from mlp.core import configuration
from mlp.machinery import reporting, run_config

pytestmark = pytest.mark.unit

DIGITS = tuple('0123456789')


def epoch_record(epoch: int) -> dict[str, float]:
  return {
    'epoch': epoch,
    'train_loss': 1.0 / epoch,
    'train_accuracy': 1 - 0.1 / epoch,
    'val_loss': 1.2 / epoch,
    'val_accuracy': 1 - 0.2 / epoch,
    'epoch_seconds': 2.0 + epoch,
    'examples_per_sec': 1000.0 * epoch,
  }


def read_events(workdir: Path) -> list[Event]:
  """Every event in the run's event files, parsed from the TFRecord framing TensorBoard reads."""
  events = []
  for path in sorted((workdir / reporting.TENSORBOARD_DIR).glob('events.out.tfevents.*')):
    data, offset = path.read_bytes(), 0
    while offset < len(data):
      (length,) = struct.unpack('<Q', data[offset : offset + 8])
      start = offset + 12  # Length, then its CRC.
      events.append(Event.FromString(data[start : start + length]))
      offset = start + length + 4  # Data, then its CRC.
  return events


def read_scalars(workdir: Path) -> dict[str, dict[int, float]]:
  """{tag: {step: value}} of the scalar summaries."""
  scalars = {}
  for event in read_events(workdir):
    for value in event.summary.value:
      if value.HasField('simple_value'):
        scalars.setdefault(value.tag, {})[event.step] = value.simple_value
  return scalars


def summary_values(workdir: Path) -> dict[str, object]:
  return {v.tag: v for event in read_events(workdir) for v in event.summary.value}


def config_values() -> dict:
  return run_config.to_dict(configuration.defaults())


def read_lines(workdir: Path) -> list[dict]:
  return [json.loads(line) for line in (workdir / reporting.METRICS_FILE).read_text().splitlines()]


def test_one_write_reaches_the_file_tensorboard_and_the_console(tmp_path, caplog):
  metrics = reporting.Metrics(tmp_path, config_values())
  with caplog.at_level(logging.INFO):
    for epoch in (1, 2):
      metrics.write(epoch, epoch_record(epoch), f'Epoch {epoch}/2')
  metrics.write(2, {'test_loss': 0.25, 'test_accuracy': 0.875}, 'Test')
  metrics.write_hparams(2, ['val_accuracy', 'test_accuracy'])
  metrics.close()

  assert read_lines(tmp_path) == [epoch_record(1), epoch_record(2), metrics.records[-1]]
  scalars = read_scalars(tmp_path)
  assert set(scalars) == {reporting.tag(n) for r in metrics.records for n in r if n != 'step'}
  assert scalars['train/loss'] == {1: 1.0, 2: 0.5}
  assert scalars['run/examples_per_sec'] == {1: 1000.0, 2: 2000.0}
  assert scalars['test/accuracy'] == {2: 0.875}
  assert 'Epoch 2/2 - train_loss: 0.5 - train_accuracy: 0.95' in caplog.text
  assert 'examples_per_sec: 2,000' in caplog.text
  values = summary_values(tmp_path)
  config_text = values['config/text_summary'].tensor.string_val[0].decode()
  assert '"mlp.hidden_sizes": [' in config_text and '"optim.learning_rate": 0.001' in config_text
  plugin_data = values['_hparams_/session_start_info'].metadata.plugin_data.content
  hparams = HParamsPluginData.FromString(plugin_data).session_start_info.hparams
  assert hparams['optim.learning_rate'].number_value == pytest.approx(1e-3)
  assert hparams['mlp.hidden_sizes'].string_value == '(50, 50)'
  assert '_hparams_/session_end_info' in values


def test_a_new_metric_needs_no_change_in_the_sink(tmp_path):
  metrics = reporting.Metrics(tmp_path, config_values())
  metrics.write(1, {'epoch': 1, 'val_top5_accuracy': 0.99, 'weight_sparsity': 0.5}, 'Epoch 1')
  assert read_scalars(tmp_path) == {
    'val/top5_accuracy': {1: pytest.approx(0.99)},
    'run/weight_sparsity': {1: 0.5},
    'run/epoch': {1: 1.0},
  }
  assert read_lines(tmp_path)[-1]['weight_sparsity'] == 0.5


def test_resumed_run_appends_to_the_same_run(tmp_path):
  """Reopening in the same second must not overwrite the first writer's file."""
  records = []
  for epoch in (1, 2):
    metrics = reporting.Metrics(tmp_path, config_values(), records)
    metrics.write(epoch, epoch_record(epoch), 'Epoch')
    metrics.close()
    records = metrics.records
  assert read_scalars(tmp_path)['train/loss'] == {1: 1.0, 2: 0.5}
  assert [r['epoch'] for r in read_lines(tmp_path)] == [1, 2]


def test_disabled_metrics_write_nothing(tmp_path):
  metrics = reporting.Metrics(tmp_path, config_values(), enabled=False)
  metrics.write(1, epoch_record(1), 'Epoch 1')
  metrics.write_hparams(1, ['val_loss'])
  metrics.close()
  assert list(tmp_path.iterdir()) == []


def test_confusion_matrix_counts():
  labels = np.array([0, 0, 1, 2, 2, 2])
  predictions = np.array([0, 1, 1, 2, 0, 2])
  expected = [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
  np.testing.assert_array_equal(reporting.confusion_matrix(labels, predictions, 3), expected)


def probabilities_with_mistakes(labels: np.ndarray, mistakes: dict[int, float]) -> np.ndarray:
  """Right with probability 0.9 everywhere except {index: confidence of a wrong class}."""
  probabilities = np.full((len(labels), 10), 0.1 / 9)
  probabilities[np.arange(len(labels)), labels] = 0.9
  for index, confidence in mistakes.items():
    wrong = (labels[index] + 1) % 10
    probabilities[index] = (1 - confidence) / 9
    probabilities[index, wrong] = confidence
  return probabilities


def test_confident_mistakes_come_most_confident_first():
  labels = np.arange(20) % 10
  probabilities = probabilities_with_mistakes(labels, {3: 0.5, 7: 0.99, 12: 0.7})
  np.testing.assert_array_equal(reporting.confident_mistakes(labels, probabilities, 24), [7, 12, 3])
  np.testing.assert_array_equal(reporting.confident_mistakes(labels, probabilities, 2), [7, 12])


def synthetic_test_split(num_examples: int = 60, seed: int = 0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (num_examples, 28, 28, 1), dtype=np.uint8)
  labels = rng.integers(0, 10, num_examples).astype(np.int32)
  logits = rng.normal(size=(num_examples, 10))
  logits[np.arange(num_examples), labels] += 2.0  # Mostly right, some mistakes.
  probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  return images, labels, probabilities


def assert_picture(path: Path) -> None:
  with Image.open(path) as image:
    assert image.format == 'PNG'
    assert image.width > 300 and image.height > 200
    pixels = np.asarray(image.convert('L'))
  assert pixels.min() < pixels.max(), 'the picture is one colour'


def test_save_pictures_writes_three_pngs(tmp_path):
  images, labels, probabilities = synthetic_test_split()
  records = [epoch_record(epoch) for epoch in (1, 2, 3)]
  paths = reporting.save_pictures(tmp_path, records, images, labels, probabilities, DIGITS)
  names = ['training_curves.png', 'confusion_matrix.png', 'misclassified.png']
  assert paths == [tmp_path / name for name in names]
  for path in paths:
    assert_picture(path)


@pytest.mark.parametrize('mistakes', [{}, {4: 0.6, 9: 0.8}])
def test_misclassified_with_none_or_few_mistakes(tmp_path, mistakes):
  labels = np.arange(30, dtype=np.int32) % 10
  images = np.zeros((30, 28, 28, 1), np.uint8)
  images[:, 10:18, 10:18] = 255
  probabilities = probabilities_with_mistakes(labels, mistakes)
  assert len(reporting.confident_mistakes(labels, probabilities, 24)) == len(mistakes)
  path = reporting.save_misclassified(tmp_path / 'm.png', images, labels, probabilities, DIGITS)
  assert_picture(path)


def test_training_curves_of_a_single_epoch(tmp_path):
  assert_picture(reporting.save_training_curves(tmp_path / 'c.png', [epoch_record(1)]))


def test_colour_pictures_with_class_names(tmp_path):
  """CIFAR-10-like data: 32x32 RGB images, named classes on the confusion matrix."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
  labels = np.arange(40, dtype=np.int32) % 10
  names = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
  probabilities = probabilities_with_mistakes(labels, {1: 0.7, 5: 0.9})
  records = [epoch_record(1)]
  for path in reporting.save_pictures(tmp_path, records, images, labels, probabilities, names):
    assert_picture(path)
