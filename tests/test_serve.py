"""The web app's API: predictions as predict prints them, every error case, batching, a load test.

The server runs as `python main.py --mode=serve` in a subprocess on a free loopback port.
"""

import base64
import contextlib
import io
import json
import logging
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import jax
import numpy as np
import pytest
from conftest import MNIST_INFO, ROOT, tiny_config
from PIL import Image
from test_preprocess import seven

from input_pipeline.errors import UserError
from mlp.core import build, steps
from mlp.reader import predict, preprocess, serve, serve_load

pytestmark = pytest.mark.integration

START_SECONDS = 180  # Importing JAX, restoring and compiling on a busy 2-core machine.
REQUEST_LINE = re.compile(r'serve\.py:\d+\] \S+ (GET|POST) (\S+) (\d{3}) \d+B [\d.]+ms$')


class Server:
  """`main.py --mode=serve` in a subprocess; its stderr lines are collected as they come."""

  def __init__(self, workdir: Path, *flags: str, env: dict[str, str] | None = None):
    command = [sys.executable, 'main.py', '--mode=serve', f'--workdir={workdir}', '--port=0']
    self.process = subprocess.Popen(
      [*command, *flags],
      cwd=ROOT,
      stderr=subprocess.PIPE,
      text=True,
      env={**os.environ, **(env or {})},
    )
    self.lines: list[str] = []
    self.url = None
    started = threading.Event()

    def collect():
      for line in self.process.stderr:
        self.lines.append(line.rstrip('\n'))
        if found := re.search(r'Serving .* on (http://\S+/)', line):
          self.url = found.group(1)
          started.set()
      started.set()  # Exited before serving: the test fails below with the log.

    threading.Thread(target=collect, daemon=True).start()
    started.wait(START_SECONDS)
    assert self.url, 'the server did not start:\n' + self.log

  @property
  def log(self) -> str:
    return '\n'.join(self.lines)

  def requests_logged(self) -> list[tuple[str, str, int]]:
    return [
      (m.group(1), m.group(2), int(m.group(3))) for m in map(REQUEST_LINE.search, self.lines) if m
    ]

  def stop(self) -> int:
    """Ctrl-C, as a user stops it; the exit status."""
    if self.process.poll() is None:
      self.process.send_signal(signal.SIGINT)
    try:
      return self.process.wait(60)
    finally:
      if self.process.poll() is None:
        self.process.kill()


@contextlib.contextmanager
def serving(workdir: Path, *flags: str):
  server = Server(workdir, *flags)
  try:
    yield server
  finally:
    server.stop()


@pytest.fixture(scope='module')
def server(trained_mnist_workdir):
  with serving(trained_mnist_workdir) as running:
    yield running


def png_header(width: int, height: int) -> bytes:
  """A PNG that states its size and holds no pixels: Pillow opens it, decoding would fail."""

  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

  header = struct.pack('>IIBBBBB', width, height, 1, 0, 0, 0, 0)
  return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', b'') + chunk(b'IEND', b'')


def png_bytes(image: Image.Image) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, 'PNG')
  return buffer.getvalue()


def cli_json(workdir: Path, path: Path, capsys) -> dict:
  """What `--mode=predict --output=json` prints for one file."""
  assert predict.run(workdir, [str(path)], 'json', None) == 0
  return json.loads(capsys.readouterr().out)


def test_summary_is_the_runs(server, trained_mnist_workdir):
  lines = (trained_mnist_workdir / 'metrics.jsonl').read_text().splitlines()
  accuracy = json.loads(lines[-1])['test_accuracy']
  facts = httpx.get(server.url + 'api/model').json()
  assert facts['test_accuracy'] == accuracy
  assert facts['dataset'] == 'mnist'
  assert facts['model'] == 'mlp (hidden_sizes=(50, 50), activation=relu, dropout_rate=0.0)'
  assert facts['classes'] == [str(d) for d in range(10)]
  assert facts['title'] == 'MLP 784-50-50-10 · MNIST'
  assert httpx.get(server.url + 'api/health').json() == {'status': 'ok', **facts}


def test_predictions_are_what_predict_prints(server, trained_mnist_workdir, tmp_path, capsys):
  path = tmp_path / 'seven.png'
  seven(ink=30, paper=220).save(path)
  expected = cli_json(trained_mnist_workdir, path, capsys)
  assert expected['digit'] == 7
  raw = httpx.post(
    server.url + 'api/predict', content=path.read_bytes(), headers={'Content-Type': 'image/png'}
  )
  upload = httpx.post(
    server.url + 'api/predict?input=1', files={'image': ('mine.png', path.read_bytes())}
  )
  assert raw.status_code == upload.status_code == 200
  raw, upload = raw.json(), upload.json()
  inputs = upload.pop('inputs')
  assert upload.pop('path') == 'mine.png'
  del expected['path']
  for result in (raw, upload):
    assert result.keys() == expected.keys()
    assert result['digit'] == expected['digit']
    np.testing.assert_allclose(result['probabilities'], expected['probabilities'], atol=1e-5)
  assert len(inputs) == 1 and inputs[0].startswith('data:image/png;base64,')
  seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(inputs[0].split(',', 1)[1]))))
  (digit,) = preprocess.read_digits(preprocess.load(path))
  np.testing.assert_array_equal(seen, digit.pixels[:, :, 0])


def _bad_requests() -> dict[str, tuple[dict, int, str]]:
  """Name: (httpx.post arguments, status, the error's start)."""
  good = png_bytes(seven(ink=0, paper=255))
  jpeg = io.BytesIO()
  seven(ink=0, paper=255).save(jpeg, 'JPEG')

  def raw(data: bytes, kind: str = 'image/png') -> dict:
    return {'content': data, 'headers': {'Content-Type': kind}}

  return {
    'not an image': (raw(b'Not a picture, whatever its type says.'), 400, 'not an image'),
    'a path': (raw(b'/etc/passwd', 'application/octet-stream'), 400, 'not an image'),
    'blank': (raw(png_bytes(Image.new('L', (100, 80), 255))), 400, 'no ink found'),
    'empty': (raw(b''), 400, 'empty file'),
    'truncated': (raw(jpeg.getvalue()[:1500], 'image/jpeg'), 400, 'damaged or truncated image'),
    'urlencoded form': ({'data': {'image': 'seven.png'}, 'files': {}}, 415, 'unsupported'),
    'multipart without a file': (
      {'files': {'note': (None, 'no file here')}},
      400,
      'no file in the form',
    ),
    'multipart, not an image': ({'files': {'image': ('x.png', b'text')}}, 400, 'not an image'),
    'over 10 MB': (raw(good + bytes(serve.MAX_BYTES)), 413, 'the upload is over the 10 MB'),
    'over the pixel limit': (
      raw(png_bytes(Image.new('1', (12000, 9000)))),
      413,
      'the image is 12000x9000 pixels',
    ),
    'decompression bomb': (raw(png_bytes(Image.new('1', (20000, 10000)))), 413, 'the image is'),
    'a 1x99,000,000 strip': (raw(png_header(1, 99_000_000)), 413, 'the image is 1x99000000 pixels'),
    'just over the budget': (raw(png_header(5001, 5000)), 413, 'the image is 5001x5000 pixels'),
    'text': (raw(good, 'text/plain'), 415, "unsupported content type 'text/plain'"),
    'json': (raw(b'{"image": "seven.png"}', 'application/json'), 415, 'unsupported content'),
    'no content type': ({'content': good}, 415, "unsupported content type '(none)'"),
  }


def test_every_bad_request_gets_a_json_error_and_the_server_goes_on(server):
  before = len(server.requests_logged())
  bad = _bad_requests()
  for name, (arguments, status, message) in bad.items():
    response = httpx.post(server.url + 'api/predict', **arguments)
    assert response.status_code == status, (name, response.text)
    assert response.headers['content-type'] == 'application/json', name
    error = response.json()['error']
    assert error.startswith(message) and '\n' not in error, (name, error)
  assert httpx.get(server.url + 'nowhere').json() == {'error': 'Not Found'}
  assert httpx.get(server.url + 'api/predict').status_code == 405
  good = httpx.post(
    server.url + 'api/predict', files={'image': ('7.png', png_bytes(seven(ink=0, paper=255)))}
  )
  assert good.status_code == 200 and good.json()['digit'] == 7
  expected = [('POST', '/api/predict', status) for _, status, _ in bad.values()]
  expected += [('GET', '/nowhere', 404), ('GET', '/api/predict', 405)]
  expected += [('POST', '/api/predict', 200)]
  deadline = time.monotonic() + 10
  while len(server.requests_logged()) < before + len(expected) and time.monotonic() < deadline:
    time.sleep(0.1)
  assert server.requests_logged()[before:] == expected  # One line per request.
  assert 'Traceback' not in server.log


def test_page_is_self_contained(server):
  response = httpx.get(server.url)
  assert response.status_code == 200
  assert "default-src 'self'" in response.headers['content-security-policy']
  page = response.text
  assert '<canvas id="pad"' in page and 'capture="environment"' in page
  # Nothing from the internet: no absolute URLs anywhere in the page.
  assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', page)
  assert not re.search(r'https?://', page)


@pytest.mark.slow
def test_binds_to_loopback_by_default_and_ctrl_c_stops_it(trained_mnist_workdir):
  server = Server(trained_mnist_workdir)
  try:
    assert server.url.startswith('http://127.0.0.1:')
    assert httpx.get(server.url + 'api/health').json()['status'] == 'ok'
  finally:
    status = server.stop()
  assert status == 130, server.log
  assert server.lines[-1].endswith('Stopped by SIGINT.')
  assert 'Traceback' not in server.log


def test_batcher_compiles_once_per_bucket_and_batches_concurrent_calls(tmp_path, caplog):
  model, params = build.build_model(tiny_config(tmp_path), MNIST_INFO)
  images = np.random.default_rng(0).integers(0, 256, (200, 28, 28, 1), np.uint8)
  expected = np.asarray(steps.probabilities(model, params, images))
  sizes = [1, 3, 1, 8, 1, 2, 20, 1, 5, 1] * 4  # 20 is over the largest bucket.
  starts = np.cumsum([0, *sizes[:-1]]) % (len(images) - 20)
  results = [None] * len(sizes)

  def call(i: int) -> None:
    results[i] = batcher(images[starts[i] : starts[i] + sizes[i]])

  with jax.log_compiles(), caplog.at_level(logging.WARNING):
    batcher = serve.Batcher(model, params, MNIST_INFO, buckets=(1, 4, 16)).start()
    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(sizes))]
    for thread in threads:
      thread.start()
    for thread in threads:
      thread.join()
    with pytest.raises(Exception, match='shape'):
      batcher(images[:2, :14])  # A fault reaches its caller; the thread goes on.
    after_fault = batcher(images[:1])
  batcher.close()
  compiles = [r for r in caplog.records if 'Compiling jit(probabilities)' in r.getMessage()]
  assert len(compiles) == 3, [r.getMessage() for r in compiles]
  for i, result in enumerate(results):
    np.testing.assert_allclose(result, expected[starts[i] : starts[i] + sizes[i]], atol=1e-6)
  np.testing.assert_allclose(after_fault, expected[:1], atol=1e-6)


@pytest.mark.slow
def test_load_on_loopback(server):
  """400 requests, 50 at once: none fails. Prints the figures (-s); they are not asserted."""
  body = (ROOT / 'docs' / 'example_digit.jpg').read_bytes()
  figures = serve_load.measure(server.url, body, 'image/jpeg', requests=400, concurrency=50)
  print('load test:', json.dumps(figures))
  assert figures['errors'] == 0, figures['first_error']
  assert httpx.get(server.url + 'api/health').status_code == 200


def test_load_test_refuses_other_hosts():
  with pytest.raises(UserError, match='only runs against this machine'):
    serve_load.require_loopback('http://10.1.2.3:8000/')


def test_only_its_own_host_names_are_answered_and_nothing_is_sniffed(server):
  """A DNS-rebinding page reaches 127.0.0.1 under its own name: the Host header gives it away."""
  port = server.url.rstrip('/').rsplit(':', 1)[1]
  for host in ('localhost', f'localhost:{port}', f'127.0.0.1:{port}', f'[::1]:{port}'):
    assert httpx.get(server.url + 'api/health', headers={'Host': host}).status_code == 200, host
  for host in ('evil.example', f'evil.example:{port}', f'127.0.0.1.evil.example:{port}', ''):
    response = httpx.get(server.url + 'api/health', headers={'Host': host})
    assert response.status_code == 400, host
    assert response.json()['error'].startswith('unknown host')
    assert response.headers['x-content-type-options'] == 'nosniff'
  replies = [httpx.get(server.url + path) for path in ('', 'api/model', 'favicon.ico', 'nowhere')]
  replies.append(
    httpx.post(server.url + 'api/predict', content=b'x', headers={'Content-Type': 'text/plain'})
  )
  for response in replies:
    assert response.headers['x-content-type-options'] == 'nosniff', response.url
  assert replies[2].status_code == 200 and replies[2].headers['content-type'] == 'image/svg+xml'


def test_host_names():
  assert serve.host_name('localhost:8000') == 'localhost'
  assert serve.host_name('[::1]:8000') == '::1'
  assert serve.host_name('Example.COM') == 'example.com'
  assert serve.allowed_hosts('127.0.0.1') == {'localhost', '127.0.0.1', '::1'}
  assert 'box.lan' in serve.allowed_hosts('box.lan')


def test_a_cross_site_post_is_refused_and_a_same_site_one_answered(server):
  image = {'files': {'image': ('7.png', png_bytes(seven(ink=0, paper=255)))}}
  host = server.url.removeprefix('http://').rstrip('/')
  for origin, status in [('http://evil.com', 403), ('null', 403), (f'http://{host}', 200)]:
    response = httpx.post(server.url + 'api/predict', headers={'Origin': origin}, **image)
    assert response.status_code == status, (origin, response.text)
    assert response.headers['content-type'] == 'application/json'
  assert httpx.post(server.url + 'api/predict', **image).status_code == 200  # No Origin: a tool.


def test_the_pixel_budget_makes_large_images_wait_then_503(monkeypatch):
  import asyncio

  from starlette.exceptions import HTTPException

  from mlp.machinery import deadlines

  monkeypatch.setattr(deadlines, 'DECODE_WAIT_SECONDS', 0.2)

  async def scenario() -> list[str]:
    budget, events = serve.PixelBudget(10), []

    async def request(name: str, pixels: int, hold: float) -> None:
      try:
        async with budget.share(pixels):
          events.append(f'{name} in')
          await asyncio.sleep(hold)
      except HTTPException as error:
        events.append(f'{name} {error.status_code}')

    await asyncio.gather(
      request('a', 6, 0.1), request('b', 6, 0), request('c', 3, 0), request('d', 10, 0.5)
    )
    assert budget.free == 10
    return events

  events = asyncio.run(scenario())
  # a and c fit at once; b waits for a; d (the whole budget) gets it after them, within 0.2 s.
  assert events[:2] == ['a in', 'c in'] and 'b in' in events and 'd in' in events


def _stalled_upload(url: str) -> socket.socket:
  """A POST that sends its headers and a little of its body, then nothing."""
  host, port = url.removeprefix('http://').rstrip('/').split(':')
  client = socket.create_connection((host, int(port)))
  client.sendall(
    f'POST /api/predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/png\r\n'.encode()
    + b'Content-Length: 100000\r\n\r\n\x89PNG'
  )
  return client


@pytest.mark.parametrize(
  ('signum', 'status'), [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)]
)
def test_a_signal_stops_it_within_3_s_with_requests_in_flight(
  trained_mnist_workdir, signum, status
):
  server = Server(trained_mnist_workdir)
  try:
    clients = [_stalled_upload(server.url) for _ in range(3)]
    time.sleep(0.5)
    start = time.perf_counter()
    server.process.send_signal(signum)
    assert server.process.wait(30) == status, server.log
    seconds = time.perf_counter() - start
  finally:
    server.stop()
  assert seconds < 3, seconds
  for client in clients:
    client.settimeout(5)
    answer = client.recv(65536).decode()
    client.close()
    assert answer.startswith('HTTP/1.1 503'), answer
    assert 'application/json' in answer and '"error":"the server is stopping' in answer, answer
  assert 'Traceback' not in server.log
