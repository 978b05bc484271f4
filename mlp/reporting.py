"""What a run leaves for a person to look at: TensorBoard summaries and pictures of the result.

Summaries are appended to event files under <workdir>/tensorboard while training runs, so a
killed or resumed run keeps everything it wrote. Pictures are drawn once, at the end, as PNGs
in the workdir. Neither needs TensorFlow; matplotlib is imported only when a picture is drawn
because importing it costs every run about a third of a second.
"""

import importlib
import itertools
import os
import textwrap
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import ml_collections
import numpy as np
from tensorboardX import summary
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto.event_pb2 import Event

TENSORBOARD_DIR = 'tensorboard'
EPOCH_TAGS = {
  'train_loss': 'train/loss',
  'train_accuracy': 'train/accuracy',
  'val_loss': 'val/loss',
  'val_accuracy': 'val/accuracy',
  'examples_per_sec': 'perf/examples_per_sec',
  'epoch_seconds': 'perf/epoch_seconds',
}
TEST_TAGS = {'test_loss': 'test/loss', 'test_accuracy': 'test/accuracy'}
_writer_ids = itertools.count()


class Summaries:
  """TensorBoard event files of one run; every method does nothing where enabled is False.

  Events are written and flushed synchronously: tensorboardX's SummaryWriter hands them to a
  thread, so its flush() can return before they reach the file and a killed run loses them.
  """

  def __init__(self, workdir: str | Path, config: ml_collections.ConfigDict, enabled: bool = True):
    self._config = config
    self._writer = None
    if enabled:
      logdir = Path(workdir) / TENSORBOARD_DIR
      logdir.mkdir(parents=True, exist_ok=True)
      # tensorboardX names files by the second and truncates existing ones: a resume within
      # the same second would erase the earlier file without a suffix of its own.
      suffix = f'.{os.getpid()}.{next(_writer_ids)}'
      self._writer = EventsWriter(str(logdir / 'events'), suffix)
      config_text = textwrap.indent(config.to_json(indent=2), '    ')  # A Markdown code block.
      self._write([summary.text('config', config_text)], step=0)

  def _write(self, summaries: Sequence, step: int) -> None:
    if self._writer is None:
      return
    for value in summaries:
      self._writer.write_event(Event(wall_time=time.time(), step=step, summary=value))
    self._writer.flush()

  def write_epoch(self, record: dict[str, float]) -> None:
    """Writes one metrics.jsonl epoch record as scalars at step = epoch."""
    scalars = [summary.scalar(tag, record[key]) for key, tag in EPOCH_TAGS.items()]
    self._write(scalars, step=record['epoch'])

  def write_test(self, metrics: dict[str, float], epoch: int) -> None:
    """Writes the final test metrics, and the config as hyperparameters compared across runs."""
    scalars = [summary.scalar(tag, metrics[key]) for key, tag in TEST_TAGS.items()]
    hparams = {
      key: value if isinstance(value, bool | int | float | str) else str(value)
      for key, value in self._config.to_dict().items()
    }
    # Columns of the hparams table: each run's last value of these scalar tags.
    metric_tags = ['val/loss', 'val/accuracy', *TEST_TAGS.values()]
    experiment, session_start, session_end = summary.hparams(hparams, dict.fromkeys(metric_tags))
    self._write([*scalars, experiment, session_start, session_end], step=epoch)

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def __enter__(self) -> 'Summaries':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def preload_matplotlib() -> None:
  """Imports matplotlib on a background thread, off the critical path of a run's start-up.

  Training at small batch sizes keeps one CPU core busy, so the import costs no wall time.
  """
  threading.Thread(target=importlib.import_module, args=('matplotlib.figure',), daemon=True).start()


def _figure(width: float, height: float):
  """A figure that renders with Agg on savefig, without pyplot's global state."""
  from matplotlib.figure import Figure

  return Figure(figsize=(width, height), dpi=100, layout='constrained')


def save_training_curves(path: str | Path, records: Sequence[dict[str, float]]) -> Path:
  """Loss and accuracy per epoch, train against validation, in two panels."""
  epochs = [r['epoch'] for r in records]
  figure = _figure(10, 4)
  for axes, metric in zip(figure.subplots(1, 2), ('loss', 'accuracy'), strict=True):
    for split, label in (('train', 'train'), ('val', 'validation')):
      axes.plot(epochs, [r[f'{split}_{metric}'] for r in records], marker='o', label=label)
    axes.set(title=metric.capitalize(), xlabel='epoch')
    axes.grid(alpha=0.3)
    axes.legend()
  figure.savefig(path)
  return Path(path)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int = 10):
  """Counts (num_classes, num_classes): row is the true class, column the predicted one."""
  flat = np.asarray(labels) * num_classes + np.asarray(predictions)
  return np.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def save_confusion_matrix(path: str | Path, matrix: np.ndarray) -> Path:
  """The confusion matrix as a heat map with every count written in its cell."""
  figure = _figure(7, 6)
  axes = figure.subplots()
  image = axes.imshow(matrix, cmap='Blues')
  figure.colorbar(image, ax=axes)
  classes = range(len(matrix))
  axes.set(xticks=classes, yticks=classes, xlabel='predicted', ylabel='true')
  axes.set_title(f'Confusion matrix ({matrix.trace()} of {matrix.sum()} right)')
  for (row, column), count in np.ndenumerate(matrix):
    colour = 'white' if count > matrix.max() / 2 else 'black'
    axes.text(column, row, count, ha='center', va='center', color=colour, fontsize=8)
  figure.savefig(path)
  return Path(path)


def confident_mistakes(labels: np.ndarray, probabilities: np.ndarray, count: int) -> np.ndarray:
  """Indices of up to count misclassified examples, most confident prediction first."""
  predictions = probabilities.argmax(axis=1)
  wrong = np.flatnonzero(predictions != labels)
  confidence = probabilities[wrong, predictions[wrong]]
  return wrong[np.argsort(-confidence, kind='stable')[:count]]


def save_misclassified(
  path: str | Path,
  images: np.ndarray,
  labels: np.ndarray,
  probabilities: np.ndarray,
  rows: int = 4,
  columns: int = 6,
) -> Path:
  """A grid of the most confidently misclassified digits, captioned true, predicted, probability.

  The grid is one mosaic image in one axes: drawing 24 axes costs about twice as long.
  """
  indices = confident_mistakes(labels, probabilities, rows * columns)
  mistakes = np.count_nonzero(probabilities.argmax(axis=1) != labels)
  cell_height, cell_width = 28 + 14, 28 + 4  # Room for a caption above each digit.
  mosaic = np.zeros((rows * cell_height, columns * cell_width), np.uint8)
  figure = _figure(max(1.6 * columns, 4), 1.8 * rows + 0.4)
  axes = figure.subplots()
  for cell, index in enumerate(indices):
    top, left = divmod(cell, columns)
    top, left = top * cell_height + 12, left * cell_width + 2
    mosaic[top : top + 28, left : left + 28] = images[index, ..., 0]
    predicted = probabilities[index].argmax()
    caption = f'{labels[index]} as {predicted}, {probabilities[index, predicted]:.2f}'
    axes.text(left + 14, top - 2, caption, ha='center', va='bottom', fontsize=8)
  axes.imshow(mosaic, cmap='gray_r', vmin=0, vmax=255)
  axes.set_axis_off()
  axes.set_title(
    f'Most confident mistakes (true as predicted, probability): {len(indices)} of {mistakes} shown'
  )
  if not len(indices):
    axes.text(
      mosaic.shape[1] / 2,
      mosaic.shape[0] / 2,
      'No misclassified digits',
      ha='center',
      va='center',
      fontsize=16,
    )
  figure.savefig(path)
  return Path(path)


def save_pictures(
  workdir: str | Path,
  records: Sequence[dict[str, float]],
  images: np.ndarray,
  labels: np.ndarray,
  probabilities: np.ndarray,
) -> list[Path]:
  """Writes training_curves.png, confusion_matrix.png and misclassified.png into workdir.

  Args:
    workdir: The run's directory.
    records: The epoch records of metrics.jsonl, in order.
    images: Test images uint8 (N, 28, 28, 1).
    labels: Test labels int (N,).
    probabilities: The model's class probabilities (N, 10) for those images.

  Returns:
    The paths written.
  """
  workdir = Path(workdir)
  matrix = confusion_matrix(labels, probabilities.argmax(axis=1), probabilities.shape[1])
  return [
    save_training_curves(workdir / 'training_curves.png', records),
    save_confusion_matrix(workdir / 'confusion_matrix.png', matrix),
    save_misclassified(workdir / 'misclassified.png', images, labels, probabilities),
  ]
