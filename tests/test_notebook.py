"""docs/colab.ipynb runs from top to bottom: on a CPU, on the real MNIST, with small settings.

papermill puts the settings in place of the notebook's parameters cell and fails on the first
cell that raises; every run the notebook starts raises when it exits with an error.
"""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, TFRECORD_DIR

pytestmark = pytest.mark.slow

NOTEBOOK = ROOT / 'docs' / 'colab.ipynb'


def _text_outputs(cell) -> str:
  return ''.join(output.get('text', '') for output in cell.get('outputs', []))


@pytest.mark.slow
def test_colab_notebook_runs_top_to_bottom(tmp_path, real_cache_dir):
  import papermill

  run_dir = tmp_path / 'runs'
  executed = papermill.execute_notebook(
    str(NOTEBOOK),
    str(tmp_path / 'colab.ipynb'),
    parameters={
      'data_dir': os.environ.get('TFDS_DATA_DIR') or str(TFRECORD_DIR),
      'cache_dir': str(real_cache_dir),
      'run_dir': str(run_dir),
      'num_epochs': 1,
      'benchmark_batch_sizes': [500, 2000],
      'benchmark_repeats': 1,
    },
    cwd=str(NOTEBOOK.parent),  # Inside the checkout: the install cell installs nothing.
    kernel_name='python3',
    progress_bar=False,
  )
  outputs = [_text_outputs(cell) for cell in executed.cells]
  assert any('nothing to install' in text for text in outputs)
  metrics = (run_dir / 'default' / 'metrics.jsonl').read_text().splitlines()
  assert json.loads(metrics[-1])['test_accuracy'] > 0.9  # One epoch reaches about 0.93.
  (prediction,) = [
    json.loads(line) for text in outputs for line in text.splitlines() if line.startswith('{"path"')
  ]
  # The MNIST test digit, drawn dark on white at 280x280, is read back as its label.
  assert prediction['digit'] == int(
    re.search(r'mnist-test-0-label-(\d)\.png', prediction['path'])[1]
  )
  for name in ('training_curves.png', 'confusion_matrix.png', 'misclassified.png'):
    assert (run_dir / 'default' / name).stat().st_size > 0
  assert (run_dir / 'throughput.png').stat().st_size > 0
  for dtype in ('float32', 'bfloat16'):
    curve = (run_dir / f'throughput-{dtype}' / 'throughput.jsonl').read_text().splitlines()
    assert [json.loads(line)['compute_dtype'] for line in curve] == [dtype, dtype]
  assert any(f'Run directory: {run_dir}' in text for text in outputs)


def _cell(marker: str) -> str:
  """The source of the notebook's code cell that contains `marker`."""
  notebook = json.loads(NOTEBOOK.read_text())
  (source,) = [
    ''.join(cell['source'])
    for cell in notebook['cells']
    if cell['cell_type'] == 'code' and marker in ''.join(cell['source'])
  ]
  return source


@pytest.mark.slow
def test_your_digit_cell_shows_a_number_and_an_error_without_stopping(
  tmp_path, trained_mnist_workdir, real_test_split, capsys, monkeypatch
):
  """The "Your digit" cell's own code, run here on a number and a blank upload (running the
  whole notebook again to reach it would train twice)."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  from PIL import Image

  digits = tmp_path / 'digits'
  digits.mkdir()
  images, labels = real_test_split.images[:3, :, :, 0], real_test_split.labels[:3]
  row = np.concatenate([np.pad(image, 6) for image in images], axis=1)
  Image.fromarray(255 - row).resize((row.shape[1] * 4, row.shape[0] * 4)).save(digits / 'row.png')
  Image.new('L', (200, 200), 255).save(digits / 'blank.png')
  namespace = {'__name__': '__main__', 'plt': plt, 'run_dir': tmp_path}
  exec(_cell('def run('), namespace)
  namespace.update(workdir=trained_mnist_workdir, digit='upload', test=real_test_split)
  monkeypatch.chdir(ROOT)  # As the notebook runs, in the checkout.
  exec(_cell("'--mode=predict'"), namespace)
  results = {Path(r['path']).name: r for r in namespace['results']}
  assert results['row.png']['number'] == ''.join(map(str, labels))
  assert results['blank.png']['error'].startswith('no ink found')
  shown = capsys.readouterr().out
  assert f'row.png: {namespace["caption"](results["row.png"])}' in shown
  assert 'blank.png: no digit no ink found' in shown
  plt.close('all')
