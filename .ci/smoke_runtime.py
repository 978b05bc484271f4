"""Every user mode in a virtualenv of requirements.txt alone, on real MNIST: what a user installs.

`.ci/run` runs it first, with that virtualenv's python, from the repository root, with
TFDS_DATA_DIR naming an array_record copy of MNIST (the virtualenv has no TensorFlow, so a
tfrecord copy cannot be read there). It trains one epoch, then evaluates, predicts, exports
(and runs the exported model) and serves (one request). The first mode that fails ends it with
its output and exit status 1.
"""

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / 'docs' / 'example_digit.jpg'
START_SECONDS = 300  # Importing JAX, restoring and compiling on a busy 2-core machine.


class Failed(Exception):
  """A mode that did not do its job; the message says which and shows its output."""


def main_py(*args: str) -> subprocess.CompletedProcess:
  """`python main.py ARGS`, its output kept; a non-zero exit fails the smoke test."""
  command = [sys.executable, 'main.py', *args]
  done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
  if done.returncode != 0:
    raise Failed(f'{" ".join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}')
  return done


def train(workdir: Path, cache_dir: Path) -> None:
  main_py(
    '--config=configs/default.py',
    '--config.optim.num_epochs=1',
    f'--config.run.cache_dir={cache_dir}',
    f'--workdir={workdir}',
  )
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  accuracy = records[-1]['test_accuracy']
  if accuracy < 0.9:
    raise Failed(f'one epoch reached test accuracy {accuracy}, not the 0.9 it always reaches')


def evaluate(workdir: Path) -> None:
  done = main_py('--mode=eval', f'--workdir={workdir}')
  if 'test_accuracy' not in done.stdout + done.stderr:
    raise Failed(f'eval printed no test_accuracy:\n{done.stdout}{done.stderr}')


def predict(workdir: Path) -> None:
  done = main_py('--mode=predict', f'--workdir={workdir}', f'--image={IMAGE}', '--output=json')
  answer = json.loads(done.stdout.splitlines()[-1])
  if answer.get('digit') != 4:
    raise Failed(f'predict read docs/example_digit.jpg (a 4) as {answer}')


def export(workdir: Path, export_file: Path) -> None:
  import jax  # Here, not at the top: the modes above run without this process holding JAX.
  import numpy as np

  main_py('--mode=export', f'--workdir={workdir}', f'--export_file={export_file}')
  model = jax.export.deserialize(export_file.read_bytes())
  probabilities = model.call(np.zeros((3, 28, 28, 1), np.uint8))
  if probabilities.shape != (3, 10):
    raise Failed(f'the exported model answered shape {probabilities.shape}, not (3, 10)')


def serve(workdir: Path) -> None:
  command = [sys.executable, 'main.py', '--mode=serve', f'--workdir={workdir}', '--port=0']
  server = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
  log = []
  try:
    url = None
    deadline = time.monotonic() + START_SECONDS
    while url is None and time.monotonic() < deadline:
      line = server.stderr.readline()
      if not line:  # It exited before serving.
        break
      log.append(line)
      if found := re.search(r'Serving .* on (http://\S+/)', line):
        url = found.group(1)
    if url is None:
      raise Failed('serve did not start:\n' + ''.join(log))
    request = urllib.request.Request(
      url + 'api/predict', data=IMAGE.read_bytes(), headers={'Content-Type': 'image/jpeg'}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
      status, answer = response.status, json.loads(response.read())
    if status != 200 or answer.get('digit') != 4:
      raise Failed(f'POST /api/predict answered {status} {answer}')
  finally:
    server.send_signal(signal.SIGTERM)
    try:
      status = server.wait(60)
    except subprocess.TimeoutExpired:
      server.kill()
      raise Failed('serve did not stop within 60 s of SIGTERM') from None
  if status != 143:  # 128 + SIGTERM: a server stopped by a signal says so.
    raise Failed(f'serve exited {status} after SIGTERM:\n' + ''.join(log) + server.stderr.read())


def main() -> int:
  if importlib.util.find_spec('tensorflow') is not None:
    print('smoke_runtime: TensorFlow is installed; run me in a requirements.txt-only virtualenv.')
    return 1
  if not os.environ.get('TFDS_DATA_DIR'):
    print('smoke_runtime: set TFDS_DATA_DIR to a tfds data directory with an array_record MNIST.')
    return 1
  start = time.perf_counter()
  with tempfile.TemporaryDirectory() as tmp:
    workdir, cache_dir, export_file = Path(tmp, 'run'), Path(tmp, 'cache'), Path(tmp, 'run.jax')
    steps = {
      'train': lambda: train(workdir, cache_dir),
      'eval': lambda: evaluate(workdir),
      'predict': lambda: predict(workdir),
      'export': lambda: export(workdir, export_file),
      'serve': lambda: serve(workdir),
    }
    for name, step in steps.items():
      began = time.perf_counter()
      try:
        step()
      except Failed as error:
        print(f'smoke_runtime: {name} FAILED: {error}')
        return 1
      print(f'smoke_runtime: {name} ok ({time.perf_counter() - began:.1f} s)', flush=True)
  print(f'smoke_runtime: every mode ok in {time.perf_counter() - start:.0f} s')
  return 0


if __name__ == '__main__':
  sys.exit(main())
