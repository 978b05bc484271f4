"""Predicting users' images: the CLI on MNIST digits disguised as photos, bad files, the export."""

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import MNIST_INFO, ROOT, tiny_config
from PIL import Image
from test_preprocess import seven

from mlp import build, checkpoint, configuration, export, predict, steps, train
from mlp.errors import UserError


def as_users_photo(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
  """An MNIST digit as a phone sees it: enlarged, dark on tinted noisy paper, anywhere on a page."""
  scale = int(rng.integers(3, 9))
  side = 28 * scale
  ink = np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC)) / 255
  paper, dark = rng.uniform(150, 240), rng.uniform(0, 90)
  height, width = (int(side * rng.uniform(1.3, 2.5)) for _ in range(2))
  page = np.full((height, width), paper)
  top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
  page[top : top + side, left : left + side] -= (paper - dark) * ink
  page += rng.normal(0, 10, page.shape)
  rgb = page[:, :, None] * np.array([1.0, 0.96, 0.88])  # Warm light.
  return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def test_cli_reads_photographed_digits_nearly_as_well_as_mnist(
  tmp_path, trained_mnist_workdir, real_test_split
):
  rng = np.random.default_rng(0)
  indices = np.sort(rng.choice(len(real_test_split), 200, replace=False))
  photos = tmp_path / 'photos'
  photos.mkdir()
  for i in indices:
    as_users_photo(real_test_split.images[i, :, :, 0], rng).save(photos / f'{i:05d}.jpg')
  command = [sys.executable, 'main.py', '--mode=predict', f'--workdir={trained_mnist_workdir}']
  command += [f'--image={photos}', '--output=json']
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  lines = [json.loads(line) for line in result.stdout.splitlines()]
  assert [Path(line['path']).name for line in lines] == [f'{i:05d}.jpg' for i in indices]
  labels = real_test_split.labels[indices]
  from_photos = np.mean([line['digit'] for line in lines] == labels)
  _, info, model, params = checkpoint.restore_for_inference(trained_mnist_workdir)
  in_memory = np.mean(
    predict.classifier(model, params, info)(real_test_split.images[indices]).argmax(-1) == labels
  )
  assert from_photos >= 0.9 * in_memory, (from_photos, in_memory)
  for line in lines:
    assert line['probability'] == max(line['probabilities'])
    assert sum(line['probabilities']) == pytest.approx(1, abs=1e-4)


def test_export_predicts_as_the_checkpoint_without_this_code(
  tmp_path, trained_mnist_workdir, real_test_split
):
  path = export.run(trained_mnist_workdir)
  images = real_test_split.images[:300]
  np.save(tmp_path / 'images.npy', images)
  # The documented snippet, in an interpreter that cannot import this codebase (-I).
  snippet = f"""
import jax
import numpy as np
with open({str(path)!r}, 'rb') as f:
  model = jax.export.deserialize(f.read())
images = np.load('images.npy')
np.save('one.npy', model.call(images[:1]))
np.save('all.npy', model.call(images))
"""
  subprocess.run([sys.executable, '-I', '-c', snippet], cwd=tmp_path, check=True, timeout=120)
  _, info, model, params = checkpoint.restore_for_inference(trained_mnist_workdir)
  expected = predict.classifier(model, params, info)(images)
  exported = np.load(tmp_path / 'all.npy')
  np.testing.assert_array_equal(exported.argmax(-1), expected.argmax(-1))
  np.testing.assert_allclose(exported, expected, atol=1e-5)
  np.testing.assert_allclose(np.load(tmp_path / 'one.npy'), expected[:1], atol=1e-5)


def test_classifier_compiles_once_for_any_number_of_images(tmp_path, caplog):
  model, params = build.build_model(tiny_config(tmp_path), MNIST_INFO)
  images = np.random.default_rng(0).integers(0, 256, (300, 28, 28, 1), np.uint8)
  classify = predict.classifier(model, params, MNIST_INFO, batch_size=128)
  with jax.log_compiles(), caplog.at_level(logging.WARNING):
    results = {n: classify(images[:n]) for n in (300, 5, 128, 0)}
  compiles = [
    r for r in caplog.records if r.getMessage().startswith('Compiling jit(probabilities)')
  ]
  assert len(compiles) == 1
  expected = np.asarray(steps.probabilities(model, params, images))
  for n, result in results.items():
    np.testing.assert_allclose(result, expected[:n], atol=1e-6)


def write_inputs(folder: Path) -> None:
  """Two pictures of a 7 among every kind of file that holds no readable digit."""
  folder.mkdir()
  seven(ink=0, paper=255).save(folder / 'a_seven.png')
  Image.new('L', (100, 80), 255).save(folder / 'b_blank.png')
  (folder / 'c_empty.jpg').touch()
  (folder / 'd_notes.png').write_text('Not a picture, whatever its name says.\n')
  seven(ink=0, paper=255).save(folder / 'f_seven.jpg')
  (folder / 'e_truncated.jpg').write_bytes((folder / 'f_seven.jpg').read_bytes()[:1500])
  (folder / 'readme.txt').write_text('Not an image file name: skipped.\n')


ERRORS = {
  'b_blank.png': 'no ink found',
  'c_empty.jpg': 'empty file',
  'd_notes.png': 'not an image',
  'e_truncated.jpg': 'damaged or truncated image',
  'missing.png': 'no such file',
  'empty_folder': 'a directory without image files',
}
# The folder's images sorted, then the other two arguments.
ORDER = ['a_seven.png', 'b_blank.png', 'c_empty.jpg', 'd_notes.png', 'e_truncated.jpg']
ORDER += ['f_seven.jpg', 'missing.png', 'empty_folder']


def test_bad_inputs_are_reported_and_the_rest_predicted(tmp_path, mock_mnist, capsys, caplog):
  workdir = tmp_path / 'run'
  train.train_and_evaluate(tiny_config(tmp_path), workdir)
  write_inputs(tmp_path / 'folder')
  (tmp_path / 'empty_folder').mkdir()
  images = [str(tmp_path / name) for name in ('folder', 'missing.png', 'empty_folder')]
  seen = tmp_path / 'seen'

  with caplog.at_level(logging.ERROR):
    assert predict.run(workdir, images, 'json', str(seen)) == 1
  lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [Path(line['path']).name for line in lines] == ORDER
  for name, line in zip(ORDER, lines, strict=True):
    if name in ERRORS:
      assert set(line) == {'path', 'error'} and line['error'].startswith(ERRORS[name])
    else:
      assert line['digit'] in range(10) and len(line['probabilities']) == 10
  logged = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
  assert len(logged) == len(ERRORS) and all('\n' not in message for message in logged)
  assert all(any(f'{name}: {ERRORS[name]}' in message for message in logged) for name in ERRORS)
  assert sorted(p.name for p in seen.iterdir()) == ['00000-a_seven.png', '00005-f_seven.png']
  assert np.asarray(Image.open(seen / '00000-a_seven.png')).shape == (28, 28)

  assert predict.run(workdir, images, 'text', None) == 1
  out = capsys.readouterr().out.splitlines()
  assert len(out) == 2
  for line, name in zip(out, ('a_seven.png', 'f_seven.jpg'), strict=True):
    assert re.fullmatch(re.escape(str(tmp_path / 'folder' / name)) + r': \d \(\d+\.\d%\)', line)


@pytest.mark.parametrize(
  'run', [lambda w: predict.run(w, ['x.png'], 'text', None), export.run], ids=['predict', 'export']
)
def test_no_checkpoint_says_how_to_train(tmp_path, run):
  configuration.save(tiny_config(tmp_path), tmp_path)
  MNIST_INFO.save(tmp_path)
  with pytest.raises(UserError, match='train first: python main.py --config=') as error:
    run(tmp_path)
  assert '\n' not in str(error.value)
