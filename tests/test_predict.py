"""Predicting users' images: the CLI on MNIST digits disguised as photos, bad files, the export."""

import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import MNIST_INFO, ROOT, tiny_config
from PIL import Image, ImageDraw
from test_preprocess import seven

from input_pipeline.errors import UserError
from mlp.core import build, outliers, steps, train
from mlp.machinery import checkpoint, run_config
from mlp.reader import export, predict, preprocess

pytestmark = pytest.mark.integration


@pytest.fixture
def unsure_models_answer(monkeypatch):
  """Models trained a step on mock data are unsure of everything: let them answer anyway."""
  monkeypatch.setattr(predict, 'MIN_CONFIDENCE', 0.0)


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
  lines = [json.loads(line) for line in result.stdout.splitlines()]
  assert [Path(line['path']).name for line in lines] == [f'{i:05d}.jpg' for i in indices]
  refused = [line for line in lines if 'error' in line]  # A digit the model is unsure of.
  assert len(refused) <= 0.02 * len(lines), refused
  assert all(line['error'].startswith('no digit found') for line in refused)
  assert result.returncode == (1 if refused else 0), result.stderr[-2000:]
  labels = real_test_split.labels[indices]
  from_photos = np.mean([line.get('digit') for line in lines] == labels)
  classify = predict.load_classifier(trained_mnist_workdir)
  in_memory = np.mean(classify(real_test_split.images[indices]).argmax(-1) == labels)
  assert from_photos >= 0.9 * in_memory, (from_photos, in_memory)
  singles = [line for line in lines if 'digit' in line]
  assert len(singles) >= 0.97 * len(lines)  # Refused, or (rarely) cut into two digits: wrong.
  for line in refused:
    assert set(line) == {'path', 'error'}  # No digit, no number.
  for line in singles:
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


LONG_NAME = 'n' * 300 + '.png'


def spaced_sevens(count: int = 3) -> Image.Image:
  """A number: `count` sevens side by side with gaps, dark on white."""
  row = Image.new('L', (40 + 160 * count, 280), 255)
  for k in range(count):
    row.paste(seven(ink=0, paper=255, box=(40, 40, 180, 240)).crop((20, 0, 200, 280)), (160 * k, 0))
  return row


def write_inputs(folder: Path) -> None:
  """Pictures of a 7 and of 777 among every kind of file that holds no readable digit."""
  folder.mkdir()
  seven(ink=0, paper=255).save(folder / 'a_seven.png')
  Image.new('L', (100, 80), 255).save(folder / 'b_blank.png')
  (folder / 'c_empty.jpg').touch()
  (folder / 'd_notes.png').write_text('Not a picture, whatever its name says.\n')
  seven(ink=0, paper=255).save(folder / 'f_seven.jpg')
  (folder / 'e_truncated.jpg').write_bytes((folder / 'f_seven.jpg').read_bytes()[:1500])
  spaced_sevens().save(folder / 'g_number.png')
  Image.new('L', (500, 400), 255).save(folder / 'h_huge.png')  # Over the test's pixel limit.
  (folder / 'i_vector.svg').write_text('<svg xmlns="http://www.w3.org/2000/svg"/>\n')
  (folder / 'j_broken_link.png').symlink_to(folder / 'nowhere.png')
  os.mkfifo(folder / 'k_fifo.png')
  (folder / 'readme.txt').write_text('Not an image file name: skipped.\n')


ERRORS = {
  'b_blank.png': 'no ink found',
  'c_empty.jpg': 'empty file',
  'd_notes.png': 'not an image',
  'e_truncated.jpg': 'damaged or truncated image',
  'h_huge.png': 'image too large: over the limit of 150,000 pixels',
  'i_vector.svg': 'unsupported format .svg',
  'j_broken_link.png': 'broken link',
  'k_fifo.png': 'not a regular file',
  'missing.png': 'no such file',
  'empty_folder': 'a directory without image files',
  LONG_NAME: 'cannot read: File name too long',
}
# The folder's images sorted, then the other arguments.
ORDER = ['a_seven.png', 'b_blank.png', 'c_empty.jpg', 'd_notes.png', 'e_truncated.jpg']
ORDER += ['f_seven.jpg', 'g_number.png', 'h_huge.png', 'i_vector.svg', 'j_broken_link.png']
ORDER += ['k_fifo.png', 'missing.png', 'empty_folder', LONG_NAME]


@pytest.mark.usefixtures('unsure_models_answer')
def test_bad_inputs_are_reported_and_the_rest_predicted(
  tmp_path, mock_mnist, capsys, caplog, monkeypatch
):
  workdir = tmp_path / 'run'
  train.train_and_evaluate(tiny_config(tmp_path), workdir)
  write_inputs(tmp_path / 'folder')
  (tmp_path / 'empty_folder').mkdir()
  images = [str(tmp_path / name) for name in ('folder', 'missing.png', 'empty_folder', LONG_NAME)]
  seen = tmp_path / 'seen'
  monkeypatch.setattr(preprocess, 'MAX_PIXELS', 150_000)

  with caplog.at_level(logging.ERROR):
    assert predict.run(workdir, images, 'json', str(seen)) == 1
  lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [Path(line['path']).name for line in lines] == ORDER
  for name, line in zip(ORDER, lines, strict=True):
    if name in ERRORS:
      assert set(line) == {'path', 'error'} and line['error'].startswith(ERRORS[name])
    elif name == 'g_number.png':
      assert set(line) == {'path', 'number', 'digits'} and len(line['number']) == 3
      assert [d['digit'] for d in line['digits']] == [int(c) for c in line['number']]
      ink = np.asarray(Image.open(tmp_path / 'folder' / 'g_number.png')) < 128
      expected = []
      for k in range(3):
        rows, cols = np.nonzero(ink[:, 160 * k : 160 * (k + 1) if k < 2 else None])
        expected.append(
          [160 * k + cols.min(), rows.min(), 160 * k + cols.max() + 1, rows.max() + 1]
        )
      np.testing.assert_allclose([d['box'] for d in line['digits']], expected, atol=2)
    else:
      assert set(line) == {'path', 'digit', 'probability', 'probabilities'}
      assert line['digit'] in range(10) and len(line['probabilities']) == 10
  logged = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
  assert len(logged) == len(ERRORS) and all('\n' not in message for message in logged)
  assert all(any(f'{name}: {ERRORS[name]}' in message for message in logged) for name in ERRORS)
  saved = ['00000-a_seven.png', '00005-f_seven.png', '00006-g_number-boxes.png']
  saved += [f'00006-g_number-{k}.png' for k in range(3)]
  assert sorted(p.name for p in seen.iterdir()) == sorted(saved)
  assert np.asarray(Image.open(seen / '00000-a_seven.png')).shape == (28, 28)
  assert np.asarray(Image.open(seen / '00006-g_number-2.png')).shape == (28, 28)
  assert Image.open(seen / '00006-g_number-boxes.png').size == (520, 280)

  assert predict.run(workdir, images, 'text', None) == 1
  out = capsys.readouterr().out.splitlines()
  assert len(out) == 3
  for line, name in zip(out[:2], ('a_seven.png', 'f_seven.jpg'), strict=True):
    assert re.fullmatch(re.escape(str(tmp_path / 'folder' / name)) + r': \d \(\d+\.\d%\)', line)
  number = re.escape(str(tmp_path / 'folder' / 'g_number.png'))
  assert re.fullmatch(number + r': (\d{3}) \(\d \d \d; lowest probability \d+\.\d%\)', out[2])


@pytest.mark.usefixtures('unsure_models_answer')
def test_worker_processes_answer_as_this_process(tmp_path, mock_mnist, capsys, monkeypatch):
  workdir = tmp_path / 'run'
  train.train_and_evaluate(tiny_config(tmp_path), workdir)
  folder = tmp_path / 'many'
  folder.mkdir()
  for k in range(predict.MIN_PARALLEL):
    seven(ink=0, paper=255, size=(140, 140), box=(30, 20, 100, 120)).save(folder / f'{k:03d}.png')
  spaced_sevens().save(folder / 'number.png')
  (folder / 'zz_empty.png').touch()
  answers = {}
  for cores in (1, 10**6):  # Worker processes, then this process.
    monkeypatch.setattr(predict, 'MIN_CORES', cores)
    assert predict.run(workdir, [str(folder)], 'json', None) == 1
    answers[cores] = capsys.readouterr().out
  assert len(set(answers.values())) == 1
  assert len(answers[10**6].splitlines()) == predict.MIN_PARALLEL + 2


@pytest.mark.usefixtures('unsure_models_answer')
def test_long_names_are_saved_shortened(tmp_path, mock_mnist, capsys):
  workdir = tmp_path / 'run'
  train.train_and_evaluate(tiny_config(tmp_path), workdir)
  name = 's' * 250 + '.png'
  seven(ink=0, paper=255).save(tmp_path / name)
  assert predict.run(workdir, [str(tmp_path / name)], 'text', str(tmp_path / 'seen')) == 0
  assert [len(p.name) for p in (tmp_path / 'seen').iterdir()] == [6 + predict.SAVED_STEM + 4]


@pytest.mark.usefixtures('unsure_models_answer')
def test_predict_bytes_answers_as_the_cli_without_a_path(tmp_path):
  model, params = build.build_model(tiny_config(tmp_path), MNIST_INFO)
  classify = predict.classifier(model, params, MNIST_INFO)
  buffer = io.BytesIO()
  seven(ink=0, paper=255).save(buffer, 'PNG')
  answer = predict.predict_bytes(buffer.getvalue(), classify, MNIST_INFO)
  assert set(answer) == {'digit', 'probability', 'probabilities'}
  expected = classify(preprocess.read_digits(seven(ink=0, paper=255))[0].pixels[None])[0]
  np.testing.assert_allclose(answer['probabilities'], expected, rtol=1e-5)
  buffer = io.BytesIO()
  spaced_sevens(4).save(buffer, 'JPEG')
  assert len(predict.predict_bytes(buffer.getvalue(), classify, MNIST_INFO)['number']) == 4
  for data, message in [
    (b'', 'empty file'),
    (b'not an image at all', 'not an image'),
    (blank_png(), 'no ink'),
  ]:
    with pytest.raises(UserError, match=message) as error:
      predict.predict_bytes(data, classify, MNIST_INFO)
    assert '\n' not in str(error.value)


def blank_png() -> bytes:
  buffer = io.BytesIO()
  Image.new('L', (50, 50), 255).save(buffer, 'PNG')
  return buffer.getvalue()


@pytest.mark.slow
def test_closed_stdout_ends_quietly(tmp_path, mock_mnist):
  workdir = tmp_path / 'run'
  train.train_and_evaluate(tiny_config(tmp_path), workdir)
  folder = tmp_path / 'many'
  folder.mkdir()
  for k in range(predict.MIN_PARALLEL + 6):  # Prepared by worker processes.
    seven(ink=0, paper=255, size=(140, 140), box=(30, 20, 100, 120)).save(folder / f'{k:03d}.png')
  command = (
    f'{sys.executable} main.py --mode=predict --workdir={workdir} --image={folder}'
    ' --output=json | head -1'  # json: also a line for the digits this mock model refuses.
  )
  result = subprocess.run(
    ['bash', '-o', 'pipefail', '-c', command], cwd=ROOT, capture_output=True, text=True, timeout=300
  )
  assert json.loads(result.stdout)['path'] == str(folder / '000.png')
  assert 'Traceback' not in result.stderr and 'BrokenPipe' not in result.stderr, result.stderr[
    -2000:
  ]


@pytest.mark.parametrize(
  'run', [lambda w: predict.run(w, ['x.png'], 'text', None), export.run], ids=['predict', 'export']
)
def test_no_checkpoint_says_how_to_train(tmp_path, run):
  run_config.save(tiny_config(tmp_path), tmp_path)
  MNIST_INFO.save(tmp_path)
  with pytest.raises(UserError, match='train first: python main.py --config=') as error:
    run(tmp_path)
  assert '\n' not in str(error.value)


def _rows(*best: float) -> np.ndarray:
  """Probability rows whose best class k (k = 0, 1, ...) has the given probability."""
  rows = np.full((len(best), 10), 0.0)
  for k, p in enumerate(best):
    rows[k] = (1 - p) / 9
    rows[k, k] = p
  return rows


def _digit(x: int) -> preprocess.Digit:
  return preprocess.Digit(np.zeros((28, 28, 1), np.uint8), (x, 0, x + 10, 20))


def test_the_reading_the_model_is_surest_of_wins():
  one, two = [_digit(0)], [_digit(0), _digit(10)]
  # As one digit at 60%, as two at 99% each: two.
  digits, rows = predict.choose([[one, two]], _rows(0.6, 0.99, 0.99))
  assert len(digits) == 2 and rows.shape == (2, 10)
  # As one digit at 99%, as two at 99% and 70%: one.
  digits, rows = predict.choose([[one, two]], _rows(0.99, 0.99, 0.7))
  assert digits == one and rows[0].max() == pytest.approx(0.99)
  # Two slots, each chosen on its own.
  digits, _ = predict.choose([[one], [one, two]], _rows(0.9, 0.5, 0.95, 0.95))
  assert len(digits) == 3


def test_a_digit_the_model_is_unsure_of_is_no_digit():
  answer = predict.decide([[[_digit(0)]]], _rows(predict.MIN_CONFIDENCE - 0.01), MNIST_INFO)
  assert set(answer) == {'error'} and answer['error'].startswith('no digit found')
  answer = predict.decide([[[_digit(0)]]], _rows(predict.MIN_CONFIDENCE + 0.01), MNIST_INFO)
  assert answer['digit'] == 0


@pytest.mark.unit
def test_a_run_trained_to_refuse_brings_its_threshold(tmp_path):
  assert predict.refusal(tmp_path) == predict.Refusal(predict.MIN_CONFIDENCE, False)
  chosen = outliers.refusal(np.array([[0.2, 0.8]] * 9 + [[0.4, 0.6]]), 10, 0.9)
  (tmp_path / outliers.REFUSAL_FILE).write_text(json.dumps(chosen))
  threshold, trained = predict.refusal(tmp_path)
  assert trained and 0.6 <= threshold <= 0.8
  answer = predict.decide(
    [[[_digit(0)]]], _rows(threshold - 0.01), MNIST_INFO, predict.refusal(tmp_path)
  )
  assert set(answer) == {'error'}
  (tmp_path / outliers.REFUSAL_FILE).write_text('{"min_confidence": "high"}')
  with pytest.raises(UserError, match='refusal.json is damaged'):
    predict.refusal(tmp_path)


def test_a_line_and_a_dot_are_no_digit_for_any_model(tmp_path):
  """Refused before the model reads them: here one built and never trained."""
  model, params = build.build_model(tiny_config(tmp_path), MNIST_INFO)
  classify = predict.classifier(model, params, MNIST_INFO)
  line, dot = (Image.new('L', (280, 280), 255) for _ in range(2))
  ImageDraw.Draw(line).line([(40, 140), (240, 150)], fill=0, width=22)
  ImageDraw.Draw(dot).ellipse((129, 129, 151, 151), fill=0)
  for image, reason in ((line, 'line'), (dot, 'dot')):
    buffer = io.BytesIO()
    image.save(buffer, 'PNG')
    with pytest.raises(UserError, match=f'^no digit found: the ink is a {reason}'):
      predict.predict_bytes(buffer.getvalue(), classify, MNIST_INFO)
