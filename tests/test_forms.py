"""Predict through the CLI on MNIST test digits in the forms users bring (tests/forms.py).

Each form must read at least 95% as well as the same digits do in memory, and numbers about as
well as the product of their digits' accuracies. Prints a form -> accuracy table (pytest -s).
"""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT
from forms import jpeg50, number, ruled, shadowed, speckled, tight_crop, with_neighbour

from mlp.reader import predict

pytestmark = pytest.mark.slow

PER_FORM = 120
NUMBERS = 40  # Per length, 2 to 6 digits.
FORMS = {
  **{
    f'tight_{side}px_{"dark" if dark else "light"}_ink': tight_crop(side, dark)
    for side in (16, 28, 64)
    for dark in (True, False)
  },
  'ruled_paper': ruled(squared=False),
  'squared_paper': ruled(squared=True),
  'shadow': shadowed,
  'specks': speckled,
  'jpeg_quality_50': jpeg50,
}


@pytest.mark.slow
def test_cli_reads_every_form_nearly_as_well_as_mnist(
  tmp_path, trained_mnist_workdir, real_test_split
):
  rng = np.random.default_rng(0)
  images, labels = real_test_split.images[:, :, :, 0], real_test_split.labels
  truth = {}  # File name -> the digits it shows.
  for name, form in [*FORMS.items(), ('neighbour_or_box_line', with_neighbour)]:
    folder = tmp_path / name
    folder.mkdir()
    for i in rng.choice(len(images), PER_FORM, replace=False):
      extra = (images[rng.integers(len(images))],) if form is with_neighbour else ()
      suffix = 'jpg' if form is jpeg50 else 'png'
      form(images[i], rng, *extra).save(folder / f'{i:05d}.{suffix}')
      truth[f'{name}/{i:05d}.{suffix}'] = [i]
  for length in range(2, 7):
    folder = tmp_path / f'number_{length}_digits'
    folder.mkdir()
    for k in range(NUMBERS):
      chosen = list(rng.choice(len(images), length, replace=False))
      number([images[i] for i in chosen], rng).save(folder / f'{k:03d}.png')
      truth[f'{folder.name}/{k:03d}.png'] = chosen

  command = [sys.executable, 'main.py', '--mode=predict', f'--workdir={trained_mnist_workdir}']
  command += [f'--image={folder}' for folder in sorted(tmp_path.iterdir())] + ['--output=json']
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  lines = [json.loads(line) for line in result.stdout.splitlines()]
  assert len(lines) == len(truth)

  classify = predict.load_classifier(trained_mnist_workdir)
  in_memory = classify(real_test_split.images).argmax(-1) == labels  # Per test digit.
  table = {}
  for line in lines:
    key = '/'.join(line['path'].split('/')[-2:])
    chosen = truth[key]
    read = [line['digit']] if 'digit' in line else [d['digit'] for d in line['digits']]
    form = key.split('/')[0]
    table.setdefault(form, []).append(
      (read == list(labels[chosen]), np.prod(in_memory[chosen]), len(read) == len(chosen))
    )
  print(f'\n{"form":32} {"read":>6} {"in memory":>10} {"count right":>12}')
  for form, rows in table.items():
    read, expected, counted = np.mean(rows, axis=0)
    print(f'{form:32} {read:6.1%} {expected:10.1%} {counted:12.1%}')
  for form, rows in table.items():
    read, expected, _ = np.mean(rows, axis=0)
    if form.startswith('number'):
      assert read >= 0.75 * expected, (form, read, expected)
    else:
      assert read >= 0.95 * expected, (form, read, expected)
  numbers = np.mean([row for form, rows in table.items() if 'number' in form for row in rows], 0)
  assert numbers[0] >= 0.85 * numbers[1], numbers  # All lengths: near the digits' product.
  for line in lines:
    if 'digits' in line:
      assert line['number'] == ''.join(str(d['digit']) for d in line['digits'])
      lefts = [d['box'][0] for d in line['digits']]
      assert lefts == sorted(lefts)
