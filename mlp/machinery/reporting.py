"""What a run leaves for people to read: metrics, TensorBoard summaries and pictures.

Summaries are appended to event files under <workdir>/tensorboard while training runs, so a
killed or resumed run keeps everything it wrote; in a bucket, which has no append, each event
file is written locally and uploaded whole after every flush (once an epoch; they are small).
Pictures are drawn once, at the end, as PNGs in the workdir, by a child process
(draw_in_background): importing matplotlib and drawing take longer than the default run's
training, and nobody needs to wait for them. Neither needs TensorFlow.
"""

import io
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from absl import logging
from etils import epath
from tensorboardX import summary
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto.event_pb2 import Event

from input_pipeline.errors import UserError
from mlp.machinery import checked, files

TENSORBOARD_DIR = 'tensorboard'
METRICS_FILE = 'metrics.jsonl'
PICTURE_INPUTS = '.pictures.npz'  # What the child drawing the pictures reads, then removes.
PICTURES = ('training_curves.png', 'confusion_matrix.png', 'misclassified.png')
SPLIT_PREFIXES = ('train', 'val', 'test')
# The fields of a record that measure time: they differ between runs that agree on every number.
TIMINGS = ('examples_per_sec', 'train_seconds', 'elapsed_seconds')
_writer_ids = itertools.count()


# A line of metrics.jsonl: a metric's value by name (NaN and infinities written as such), and
# in an epoch's record the epoch, counted from 1.
RECORD_SHAPE = checked.Value(
  dict,
  fields={
    'step': checked.Value(int, low=1, optional=True),  # Records of older runs lack it.
    'epoch': checked.Value(int, low=1, optional=True),  # Their test lines lack this too.
  },
  items=checked.Value(float, finite=False),
)


def _follows(record: dict, previous: dict | None) -> bool:
  """Whether record may come after previous: later in steps, or in epochs where one has none."""
  if previous is None:
    return True
  if 'step' in record and 'step' in previous:
    return record['step'] > previous['step'] and record['epoch'] >= previous['epoch']
  return record['epoch'] > previous['epoch']


def _whole_records(workdir: files.AnyPath) -> tuple[list[dict], list[dict]]:
  """The records of metrics.jsonl that are whole and in order, and the test lines after them."""
  path = files.path(workdir) / METRICS_FILE
  if not path.exists():
    return [], []
  records, tests = [], []
  for number, line in enumerate(files.read_bytes(path).decode(errors='replace').splitlines(), 1):
    if not line.strip():
      continue
    try:
      record = checked.check(json.loads(line), RECORD_SHAPE)
      test = any(name.startswith('test_') for name in record)
      previous = records[-1] if records else None
      whole = test or ('epoch' in record and not tests and _follows(record, previous))
    except ValueError:
      whole = False
    if not whole:
      logging.warning(
        '%s: line %d is damaged; dropping it and the lines after it, which training from an '
        'earlier checkpoint writes again.',
        path,
        number,
      )
      break
    (tests if test else records).append(record)
  return records, tests


def read_records(workdir: files.AnyPath) -> list[dict]:
  """The records of metrics.jsonl that are whole and in order, test lines left out.

  Each line is checked against RECORD_SHAPE. A damaged line is dropped with a warning, with
  every line after it: the run resumes from a checkpoint at or before the last whole record and
  writes them again.
  """
  return _whole_records(workdir)[0]


def read_results(workdir: files.AnyPath, num_epochs: int) -> dict | None:
  """What a finished run returned: its records up to epoch num_epochs and its test metrics;
  None while metrics.jsonl holds no such whole run. A finished run re-run returns these."""
  records, tests = _whole_records(workdir)
  if not records or records[-1]['epoch'] != num_epochs or len(tests) != 1:
    return None
  return {'records': records, **{k: v for k, v in tests[0].items() if k.startswith('test_')}}


def tag(name: str) -> str:
  """The TensorBoard tag of a metric: train_loss -> train/loss, grad_norm -> run/grad_norm."""
  split, _, rest = name.partition('_')
  return f'{split}/{rest}' if split in SPLIT_PREFIXES and rest else f'run/{name}'


def format_line(label: str, scalars: dict[str, float]) -> str:
  """The console line of a record: 'Step 1080/5400 (epoch 2) - train_loss: 0.1234 - ...'; the
  label says the step and epoch."""

  def number(value: float) -> str:
    return f'{value:,.0f}' if abs(value) >= 1000 else f'{value:.4g}'

  values = (
    f'{name}: {number(value)}' for name, value in scalars.items() if name not in ('step', 'epoch')
  )
  return ' - '.join([label, *values])


class Metrics:
  """The one sink of a run's numbers: metrics.jsonl, TensorBoard scalars and the console.

  `write` takes a dict of scalars, so a new metric needs no change here. Records are kept in
  order and metrics.jsonl is rewritten atomically with each, so a killed run leaves whole lines;
  a resumed run starts from the records up to its checkpoint. TensorBoard events are written and
  flushed synchronously: tensorboardX's SummaryWriter hands them to a thread, so its flush() can
  return before they reach the file. Where enabled is False (processes other than 0) only the
  console line is written.
  """

  def __init__(
    self,
    workdir: str | epath.PathLike,
    config_values: dict,
    records: Sequence[dict] = (),
    enabled: bool = True,
  ):
    self.workdir = files.path(workdir)
    self.records = list(records)
    self._config_values = config_values
    self._writer = None
    self._logdir = self.workdir / TENSORBOARD_DIR
    # In a bucket the events go to a local file first, uploaded whole after each flush.
    self._local = tempfile.mkdtemp(prefix='tensorboard-') if files.in_bucket(self.workdir) else ''
    if enabled:
      if not self._local:
        if self._logdir.exists() and not self._logdir.is_dir():
          raise UserError(
            f'{self._logdir} is a file, where the run writes its TensorBoard summaries; move it '
            'away and run the same command again.'
          )
        self._logdir.mkdir(parents=True, exist_ok=True)
      # tensorboardX names files by the second and truncates existing ones: a resume within
      # the same second would erase the earlier file without a suffix of its own.
      suffix = f'.{os.getpid()}.{next(_writer_ids)}'
      self._writer = EventsWriter(os.path.join(self._local or self._logdir, 'events'), suffix)
      config_text = textwrap.indent(json.dumps(config_values, indent=2), '    ')  # Markdown code.
      self._write_events([summary.text('config', config_text)], step=0)
      self._write_file()

  def write(self, step: int, scalars: dict[str, float], label: str, note: str = '') -> None:
    """Records scalars at step (the epoch) everywhere, and logs them after label."""
    logging.info('%s', format_line(label, scalars) + (f' - {note}' if note else ''))
    self.records.append(scalars)
    if self._writer is not None:
      values = [summary.scalar(tag(n), v) for n, v in scalars.items() if n != 'step']
      self._write_events(values, step)
      self._write_file()

  def write_hparams(self, step: int, metric_names: Sequence[str]) -> None:
    """The config as hyperparameters, compared across runs by the last values of metric_names."""
    if self._writer is None:
      return
    hparams = {
      key: value if isinstance(value, bool | int | float | str) else str(value)
      for key, value in self._config_values.items()
    }
    experiment, start, end = summary.hparams(hparams, dict.fromkeys(map(tag, metric_names)))
    self._write_events([experiment, start, end], step)

  def _write_events(self, summaries: Sequence, step: int) -> None:
    for value in summaries:
      self._writer.write_event(Event(wall_time=time.time(), step=step, summary=value))
    self._writer.flush()
    if self._local:
      written = Path(self._writer._file_name)  # tensorboardX keeps no public name.
      files.write_atomic(self._logdir / written.name, written.read_bytes())

  def _write_file(self) -> None:
    lines = ''.join(json.dumps(r) + '\n' for r in self.records)
    files.write_atomic(self.workdir / METRICS_FILE, lines)

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None
    if self._local:
      shutil.rmtree(self._local, ignore_errors=True)


def _figure(width: float, height: float):
  """A figure that renders with Agg on savefig, without pyplot's global state."""
  from matplotlib.figure import Figure

  return Figure(figsize=(width, height), dpi=100, layout='constrained')


def _save(figure, path: str | epath.PathLike) -> files.AnyPath:
  """Writes the figure as a PNG at path: on a disk, or in a bucket in one upload."""
  buffer = io.BytesIO()
  figure.savefig(buffer, format='png')
  path = files.path(path)
  files.write_atomic(path, buffer.getvalue())
  return path


def save_training_curves(
  path: str | epath.PathLike, records: Sequence[dict[str, float]]
) -> files.AnyPath:
  """Loss and accuracy by step, train against validation, in two panels."""
  figure = _figure(10, 4)
  for axes, metric in zip(figure.subplots(1, 2), ('loss', 'accuracy'), strict=True):
    for split, label in (('train', 'train'), ('val', 'validation')):
      kept = [r for r in records if f'{split}_{metric}' in r]
      steps = [r.get('step', r['epoch']) for r in kept]
      axes.plot(steps, [r[f'{split}_{metric}'] for r in kept], marker='o', label=label)
    axes.set(title=metric.capitalize(), xlabel='step')
    axes.grid(alpha=0.3)
    axes.legend()
  return _save(figure, path)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int = 10):
  """Counts (num_classes, num_classes): row is the true class, column the predicted one."""
  flat = np.asarray(labels) * num_classes + np.asarray(predictions)
  return np.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def save_confusion_matrix(
  path: str | epath.PathLike, matrix: np.ndarray, class_names: Sequence[str]
) -> files.AnyPath:
  """The confusion matrix as a heat map with every count written in its cell."""
  figure = _figure(7, 6)
  axes = figure.subplots()
  image = axes.imshow(matrix, cmap='Blues')
  figure.colorbar(image, ax=axes)
  classes = range(len(matrix))
  axes.set(xticks=classes, yticks=classes, xlabel='predicted', ylabel='true')
  axes.set_xticklabels(class_names, rotation=90 if max(map(len, class_names)) > 2 else 0)
  axes.set_yticklabels(class_names)
  axes.set_title(f'Confusion matrix ({matrix.trace()} of {matrix.sum()} right)')
  for (row, column), count in np.ndenumerate(matrix):
    colour = 'white' if count > matrix.max() / 2 else 'black'
    axes.text(column, row, count, ha='center', va='center', color=colour, fontsize=8)
  return _save(figure, path)


def confident_mistakes(labels: np.ndarray, probabilities: np.ndarray, count: int) -> np.ndarray:
  """Indices of up to count misclassified examples, most confident prediction first."""
  predictions = probabilities.argmax(axis=1)
  wrong = np.flatnonzero(predictions != labels)
  confidence = probabilities[wrong, predictions[wrong]]
  return wrong[np.argsort(-confidence, kind='stable')[:count]]


def save_misclassified(
  path: str | epath.PathLike,
  images: np.ndarray,
  labels: np.ndarray,
  probabilities: np.ndarray,
  class_names: Sequence[str],
  rows: int = 4,
  columns: int = 6,
) -> files.AnyPath:
  """A grid of the most confidently misclassified images, captioned true, predicted, probability.

  The grid is one mosaic image in one axes: drawing 24 axes costs about twice as long. Grey
  images are drawn dark on light, as digits on paper; colour images as they are.
  """
  indices = confident_mistakes(labels, probabilities, rows * columns)
  mistakes = np.count_nonzero(probabilities.argmax(axis=1) != labels)
  height, width, channels = images.shape[1:]
  cell_height, cell_width = height + 14, width + 4  # Room for a caption above each image.
  mosaic = np.full((rows * cell_height, columns * cell_width, channels), 0, np.uint8)
  figure = _figure(max(1.6 * columns, 4), 1.8 * rows + 0.4)
  axes = figure.subplots()
  for cell, index in enumerate(indices):
    top, left = divmod(cell, columns)
    top, left = top * cell_height + 12, left * cell_width + 2
    mosaic[top : top + height, left : left + width] = images[index]
    predicted = probabilities[index].argmax()
    true_name, predicted_name = class_names[labels[index]], class_names[predicted]
    caption = f'{true_name} as {predicted_name}, {probabilities[index, predicted]:.2f}'
    axes.text(left + width / 2, top - 2, caption, ha='center', va='bottom', fontsize=7)
  if channels == 1:
    axes.imshow(mosaic[..., 0], cmap='gray_r', vmin=0, vmax=255)
  else:
    axes.imshow(np.where(mosaic.any(-1, keepdims=True), mosaic, 255))
  axes.set_axis_off()
  axes.set_title(
    f'Most confident mistakes (true as predicted, probability): {len(indices)} of {mistakes} shown'
  )
  if not len(indices):
    axes.text(
      mosaic.shape[1] / 2,
      mosaic.shape[0] / 2,
      'No misclassified images',
      ha='center',
      va='center',
      fontsize=16,
    )
  return _save(figure, path)


def save_pictures(
  workdir: str | epath.PathLike,
  records: Sequence[dict[str, float]],
  images: np.ndarray,
  labels: np.ndarray,
  probabilities: np.ndarray,
  class_names: Sequence[str],
) -> list[files.AnyPath]:
  """Writes training_curves.png, confusion_matrix.png and misclassified.png into workdir.

  Args:
    workdir: The run's directory.
    records: The epoch records of metrics.jsonl, in order.
    images: Test images uint8 (N, H, W, C).
    labels: Test labels int (N,).
    probabilities: The model's class probabilities (N, classes) for those images.
    class_names: The name of each class, for the captions.

  Returns:
    The paths written.
  """
  workdir = files.path(workdir)
  matrix = confusion_matrix(labels, probabilities.argmax(axis=1), probabilities.shape[1])
  curves, confusion, mistakes = (workdir / name for name in PICTURES)
  return [
    save_training_curves(curves, records),
    save_confusion_matrix(confusion, matrix, class_names),
    save_misclassified(mistakes, images, labels, probabilities, class_names),
  ]


def draw_in_background(
  workdir: files.AnyPath,
  records: Sequence[dict[str, float]],
  images: np.ndarray,
  labels: np.ndarray,
  probabilities: np.ndarray,
  class_names: Sequence[str],
) -> subprocess.Popen:
  """save_pictures in a child process of its own session, which outlives this one.

  Its inputs go to <workdir>/PICTURE_INPUTS (a local temporary file for a workdir in a bucket),
  removed once the PNGs are written; a failure is one line on stderr. A signal to this process
  does not reach the child.
  """
  if files.in_bucket(workdir):
    descriptor, name = tempfile.mkstemp(suffix=PICTURE_INPUTS)
    os.close(descriptor)
    inputs = Path(name)
  else:
    inputs = Path(workdir) / PICTURE_INPUTS
  with open(inputs, 'wb') as file:
    np.savez(
      file,
      images=images,
      labels=labels,
      probabilities=probabilities,
      class_names=np.array(class_names),
      records=np.array(json.dumps(list(records))),
    )
  root = Path(__file__).resolve().parents[2]
  return subprocess.Popen(
    [sys.executable, '-m', 'mlp.machinery.reporting', str(files.path(workdir)), str(inputs)],
    cwd=root,
    stdin=subprocess.DEVNULL,
    start_new_session=True,
  )


def _draw(workdir: files.AnyPath, inputs: Path) -> int:
  try:
    with np.load(inputs) as data:
      save_pictures(
        workdir,
        json.loads(str(data['records'])),
        data['images'],
        data['labels'],
        data['probabilities'],
        data['class_names'].tolist(),
      )
  except (OSError, ValueError, KeyError) as error:
    sys.stderr.write(f'Drawing the pictures of {workdir} failed: {error}\n')
    return 1
  finally:
    inputs.unlink(missing_ok=True)
  return 0


if __name__ == '__main__':
  sys.exit(_draw(files.path(sys.argv[1]), Path(sys.argv[2])))
