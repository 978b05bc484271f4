"""Training needs no TensorFlow: Colab's TPU runtimes no longer ship it.

A subprocess of this file hides TensorFlow from the import system, as if it were not installed,
then trains one epoch on the real MNIST in its array_record form (read with tfds.data_source).
"""

import importlib.machinery
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


class _PathFinderWithoutTensorFlow(importlib.machinery.PathFinder):
  """Finds every installed module but TensorFlow; libraries probe with find_spec, so no raising."""

  @classmethod
  def find_spec(cls, name, path=None, target=None):
    if name.partition('.')[0] == 'tensorflow':
      return None
    return super().find_spec(name, path, target)


def hide_tensorflow() -> None:
  """From here on this process imports as if TensorFlow were not installed."""
  sys.meta_path = [
    _PathFinderWithoutTensorFlow if finder is importlib.machinery.PathFinder else finder
    for finder in sys.meta_path
  ]


def _worker(tmp_path: str) -> None:
  hide_tensorflow()
  from conftest import ARRAY_RECORD_DIR, tiny_config

  from mlp.core import train

  config = tiny_config(
    Path(tmp_path), {'data.dir': str(ARRAY_RECORD_DIR), 'run.checkpoint_every_epochs': 0}
  )
  result = train.train_and_evaluate(config, Path(tmp_path) / 'run')
  loaded = sorted(m for m in sys.modules if m.partition('.')[0] == 'tensorflow')
  print(json.dumps({'test_accuracy': result['test_accuracy'], 'tensorflow_modules': loaded}))


def test_trains_on_array_record_mnist_without_tensorflow(tmp_path, array_record_dir):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': str(ROOT)}
  env.pop('TFDS_DATA_DIR', None)  # The config names the array_record copy itself.
  done = subprocess.run(
    [sys.executable, __file__, str(tmp_path)], env=env, capture_output=True, text=True, timeout=180
  )
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(done.stdout.splitlines()[-1])
  assert result['tensorflow_modules'] == []
  assert result['test_accuracy'] > 0.85  # One epoch of a 16-unit model reaches about 0.93.


if __name__ == '__main__':
  _worker(sys.argv[1])
