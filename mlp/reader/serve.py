"""A local web app over a trained run: a page to draw or upload digits, and a JSON API.

Command:
  python main.py --mode=serve --workdir=runs/default-... [--port=8000] [--host=127.0.0.1]

Routes:
  GET  /             the page (mlp/reader/static/index.html: one file, nothing fetched from
                     elsewhere); GET /favicon.ico its icon (SVG)
  POST /api/predict  an image, as multipart/form-data (one file field) or as the raw bytes with
                     Content-Type image/* or application/octet-stream; returns the object that
                     `--mode=predict --output=json` prints ("path" is the uploaded file's name,
                     if it had one). With ?input=1 it adds "inputs": the 28x28 images the model
                     saw, as PNG data URLs.
  GET  /api/health   {"status": "ok", ...the run's summary}
  GET  /api/model    the run's summary: model, dataset, classes, test accuracy.

Errors are JSON {"error": "<one line>"}: 400 an image it cannot prepare (not an image, blank,
no digit, a mode or format it cannot convert), 403 a POST from another site's page, 408 an
upload that stalls for deadlines.UPLOAD_IDLE_SECONDS, 413 over MAX_BYTES or REQUEST_PIXELS,
415 another content type, 503 when the decoding budget stays spent for
deadlines.DECODE_WAIT_SECONDS or the server is stopping, 404/405 for other routes; 500 only for
a fault of the model itself (the traceback stays in the server's log). A client that goes away
mid-upload is one log line (status 499, nginx's "client closed request"). Uploads stay in
memory and no name from a client is ever opened.

SIGTERM, SIGHUP or Ctrl-C stop the server: requests in flight get
deadlines.SERVE_SHUTDOWN_SECONDS, then their clients get a JSON 503, and the process exits with
the signal's status (143, 129, 130) 2 s later at the latest.

Only requests whose Host header names the server (localhost, 127.0.0.1, ::1 or the --host it
listens on) are answered; others get 400, so that a web page whose domain an attacker points at
127.0.0.1 (DNS rebinding) cannot use the API. A POST whose Origin header names another host
than its Host header gets 403: another site's page cannot have the model read its images.
Every reply carries X-Content-Type-Options: nosniff.

Memory: decoding and preparing an image takes about 30 bytes per pixel (a 1x99,000,000 PNG of
192 KB took 2.8 GB). So its size is read from the header first: over REQUEST_PIXELS is 413.
The images being prepared at once hold at most DECODE_PIXELS pixels between them (a large
photo waits for the others, a drawing hardly ever), on at most PREPARE_THREADS threads. Their
model inputs go to one inference thread (`Batcher`) that classifies whatever has queued up
meanwhile in one padded batch of a fixed bucket size, each bucket compiled once at start-up.
"""

import asyncio
import base64
import concurrent.futures
import contextlib
import io
import ipaddress
import json
import logging as std_logging
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import jax
import numpy as np
import uvicorn
from absl import logging
from PIL import Image
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from input_pipeline import DatasetInfo
from input_pipeline.errors import UserError
from mlp.core import configuration, outliers
from mlp.machinery import checkpoint, deadlines, files, reporting, stopping
from mlp.reader import predict

MAX_BYTES = 10 * 1024 * 1024  # An upload's size; phone photos are 2-8 MB.
# Width x height of one image, read from its header before decoding: a 24 MP photo passes.
REQUEST_PIXELS = 25_000_000
DECODE_PIXELS = 2 * REQUEST_PIXELS  # Of all the images being prepared at once: about 1.5 GB.
BUCKETS = (1, 8, 32, 128)  # Batch sizes the inference thread compiles, one program each.
PREPARE_THREADS = max(os.cpu_count() or 1, 2)  # Decoding a photo takes tens of MB and ms.
PAGE = Path(__file__).with_name('static') / 'index.html'
# The page may load nothing but itself, the API and the images it makes.
SECURITY_HEADERS = {
  'Content-Security-Policy': "default-src 'self'; img-src 'self' data: blob:; "
  "style-src 'unsafe-inline'; script-src 'unsafe-inline'; form-action 'none'",
  'X-Content-Type-Options': 'nosniff',
}
RAW_TYPES = ('image/', 'application/octet-stream')
NOSNIFF = (b'x-content-type-options', b'nosniff')
# A white 7 on the page's blue: its icon, so that browsers find no 404.
FAVICON = (
  '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3"'
  ' fill="#0b5cad"/><path d="M4 4h8l-4 9" fill="none" stroke="#fff" stroke-width="2"/></svg>'
)

Classify = Callable[[np.ndarray], np.ndarray]


class Batcher:
  """Classifies images sent from many threads on one thread, in shared padded batches.

  A call queues its images and waits; the inference thread takes everything queued (up to the
  largest bucket), pads it to the smallest bucket that holds it and runs that bucket's program.
  Under load the batches grow by themselves while the previous one runs.
  """

  def __init__(self, model, params, info: DatasetInfo, buckets: tuple[int, ...] = BUCKETS):
    self._shape = info.image_shape
    self._classifiers = {size: predict.classifier(model, params, info, size) for size in buckets}
    self._queue: queue.Queue = queue.Queue()
    self._thread = threading.Thread(target=self._loop, name='inference', daemon=True)
    self._closing = threading.Lock()
    self._closed = False

  def start(self) -> 'Batcher':
    """Compiles every bucket (so no request waits for a compilation), then starts the thread."""
    for size, classify in self._classifiers.items():
      classify(np.zeros((size, *self._shape), np.uint8))
    self._thread.start()
    return self

  def close(self) -> None:
    """Classifies what is queued; a call after this raises (a request left running at exit)."""
    with self._closing:
      self._closed = True
      self._queue.put(None)
    self._thread.join()

  def __call__(self, images: np.ndarray) -> np.ndarray:
    """Probabilities (n, classes) for uint8 images (n, H, W, C); thread-safe, blocking."""
    done: concurrent.futures.Future = concurrent.futures.Future()
    with self._closing:
      if self._closed:
        raise RuntimeError('the server is stopping')
      self._queue.put((images, done))
    return done.result()

  def _loop(self) -> None:
    largest = max(self._classifiers)
    while (item := self._queue.get()) is not None:
      jobs = [item]
      while sum(len(images) for images, _ in jobs) < largest:
        try:
          item = self._queue.get_nowait()
        except queue.Empty:
          break
        if item is None:
          self._queue.put(None)  # Stop after this batch.
          break
        jobs.append(item)
      try:
        images = np.concatenate([images for images, _ in jobs])
        size = min((s for s in self._classifiers if s >= len(images)), default=largest)
        probabilities = self._classifiers[size](images)
      except Exception as error:  # Goes to the requests; the thread keeps serving.
        for _, done in jobs:
          done.set_exception(error)
        continue
      ends = np.cumsum([len(images) for images, _ in jobs])
      for (_, done), result in zip(jobs, np.split(probabilities, ends[:-1]), strict=True):
        done.set_result(result)


def summary(workdir: Path, config, info: DatasetInfo, params) -> dict:
  """The run's facts for the page and /api/model, read from the run's files."""
  fields = ', '.join(
    f'{path.partition(".")[2]}={configuration.get(config, path)}'
    for path in configuration.in_use(config)
    if path.startswith(f'{config.model}.')
  )
  return {
    'run': files.path(workdir).name,
    'title': title(config, info),
    'model': f'{config.model} ({fields})',
    'parameters': int(sum(leaf.size for leaf in jax.tree.leaves(params))),
    'dataset': info.name,
    'classes': list(info.class_names),
    'test_accuracy': _test_accuracy(workdir / reporting.METRICS_FILE),
  }


def title(config, info: DatasetInfo) -> str:
  """The page's header for people: 'MLP 784-50-50-10 · MNIST' (a dense model's layer sizes)."""
  model = config.model.upper()
  if config.model == 'mlp':
    hidden = configuration.get(config, 'mlp.hidden_sizes')
    model += ' ' + '-'.join(map(str, [int(np.prod(info.image_shape)), *hidden, info.num_classes]))
  return f'{model} · {info.name.replace("_", " ").upper()}'


def _test_accuracy(metrics_file: Path) -> float | None:
  """The last test accuracy in metrics.jsonl; None if the run never reached its test."""
  accuracy = None
  try:
    lines = files.read_bytes(metrics_file).decode(errors='replace').splitlines()
  except (OSError, UserError):  # Missing, a FIFO, unreadable: the page shows no accuracy.
    lines = []
  for line in lines:
    with contextlib.suppress(ValueError):  # A line cut short by a killed run.
      record = json.loads(line)
      if isinstance(record, dict) and isinstance(record.get('test_accuracy'), float):
        accuracy = record['test_accuracy']
  return accuracy


def _png_data_url(pixels: np.ndarray) -> str:
  buffer = io.BytesIO()
  Image.fromarray(pixels[:, :, 0] if pixels.shape[-1] == 1 else pixels).save(buffer, 'PNG')
  return 'data:image/png;base64,' + base64.b64encode(buffer.getvalue()).decode()


def _pixels(data: bytes) -> int:
  """Width x height from the image's header alone; 413 over REQUEST_PIXELS.

  0 for bytes that are not an image, or are damaged: preparing them says which.
  """
  try:
    with Image.open(io.BytesIO(data)) as image:
      width, height = image.size
  except Image.DecompressionBombError as error:
    raise HTTPException(413, f'the image is too large to decode ({error})') from None
  except Exception:
    return 0
  if width * height > REQUEST_PIXELS:
    raise HTTPException(
      413,
      f'the image is {width}x{height} pixels, over the limit of {REQUEST_PIXELS / 10**6:g} '
      'megapixels: send a smaller one',
    )
  return width * height


class PixelBudget:
  """The pixels that the images being prepared at once may hold between them.

  A request takes its image's share before decoding and gives it back after; one that cannot
  have it within deadlines.DECODE_WAIT_SECONDS gets 503.
  """

  def __init__(self, total: int):
    self.total = total
    self.free = total
    self._changed = asyncio.Condition()

  @contextlib.asynccontextmanager
  async def share(self, pixels: int):
    pixels = min(pixels, self.total)
    async with self._changed:
      try:
        await asyncio.wait_for(
          self._changed.wait_for(lambda: self.free >= pixels), deadlines.DECODE_WAIT_SECONDS
        )
      except TimeoutError:
        raise HTTPException(
          503, 'the server is busy preparing other images; send it again in a few seconds'
        ) from None
      self.free -= pixels
    try:
      yield
    finally:
      async with self._changed:
        self.free += pixels
        self._changed.notify_all()


async def _read_body(request: Request) -> bytes:
  """The request's body, in memory, or 413 once it passes MAX_BYTES."""
  too_large = HTTPException(
    413, f'the upload is over the {MAX_BYTES // 2**20} MB limit: send a smaller image'
  )
  declared = request.headers.get('content-length', '')
  if declared.isdigit() and int(declared) > MAX_BYTES:
    raise too_large
  chunks, size = [], 0
  stream = request.stream()
  while True:
    try:
      with anyio.fail_after(deadlines.UPLOAD_IDLE_SECONDS):
        chunk = await anext(stream)
    except StopAsyncIteration:
      return b''.join(chunks)
    except TimeoutError:
      raise HTTPException(
        408, f'the upload stalled for {deadlines.UPLOAD_IDLE_SECONDS:g}s; send it again'
      ) from None
    size += len(chunk)
    if size > MAX_BYTES:
      raise too_large
    chunks.append(chunk)


class _InMemoryParser(MultiPartParser):
  spool_max_size = MAX_BYTES  # Starlette spools larger parts to a temporary file.


async def _upload(request: Request) -> tuple[bytes, str | None]:
  """The image's bytes and its file name, if the client sent one; 415 for other content."""
  content_type = request.headers.get('content-type', '')
  kind = content_type.split(';')[0].strip().lower()
  if kind != 'multipart/form-data' and not kind.startswith(RAW_TYPES):
    raise HTTPException(
      415,
      f'unsupported content type {content_type or "(none)"!r}: send the image as '
      'multipart/form-data (a file field) or as raw bytes with Content-Type image/* or '
      'application/octet-stream',
    )
  body = await _read_body(request)
  if kind != 'multipart/form-data':
    return body, None

  async def stream():
    yield body

  try:
    form = await _InMemoryParser(
      request.headers, stream(), max_files=1, max_fields=16, max_part_size=MAX_BYTES
    ).parse()
  except Exception as error:  # MultiPartException, or a malformed body python-multipart rejects.
    raise HTTPException(400, f'malformed multipart/form-data ({error})') from None
  files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
  if not files:
    raise HTTPException(400, 'no file in the form: send the image as a file field')
  return await files[0].read(), files[0].filename


class _ModelFailed(Exception):
  """The model, not the image, failed: a 500 (an image it cannot prepare is a 400)."""


CLIENT_CLOSED = 499


def make_app(
  workdir: Path, config, info: DatasetInfo, params, batcher: Batcher, host: str = '127.0.0.1'
):
  """The ASGI app: the page, the API and JSON errors around them, for requests to `host`."""
  facts = summary(workdir, config, info, params)
  refuse = predict.refusal(workdir)
  page = PAGE.read_text()
  limiter = anyio.CapacityLimiter(PREPARE_THREADS)
  budget = PixelBudget(DECODE_PIXELS)

  async def index(request: Request) -> HTMLResponse:
    return HTMLResponse(page, headers=SECURITY_HEADERS)

  async def favicon(request: Request) -> Response:
    return Response(FAVICON, media_type='image/svg+xml', headers=SECURITY_HEADERS)

  async def health(request: Request) -> JSONResponse:
    return JSONResponse({'status': 'ok', **facts})

  async def model(request: Request) -> JSONResponse:
    return JSONResponse(facts)

  async def predict_route(request: Request) -> JSONResponse:
    data, filename = await _upload(request)

    def classify(images: np.ndarray) -> np.ndarray:
      try:
        return batcher(images)
      except Exception as error:
        raise _ModelFailed from error

    try:
      async with budget.share(_pixels(data)):
        # Abandoned, not awaited, when the server stops: the client is answered at once.
        result, seen = await anyio.to_thread.run_sync(
          predict.read_bytes,
          data,
          classify,
          info,
          refuse,
          limiter=limiter,
          abandon_on_cancel=True,
        )
    except UserError as error:
      raise HTTPException(400, str(error)) from None
    except (_ModelFailed, HTTPException):
      raise
    except Exception as error:  # Pillow and NumPy on a file they cannot convert (LAB TIFF...).
      reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
      raise HTTPException(400, f'cannot prepare this image ({reason})') from None
    if 'error' in result:  # No digit: the model's refusal, as the reader's.
      raise HTTPException(400, result['error'])
    if filename:
      result = {'path': filename, **result}
    if request.query_params.get('input') in ('1', 'true'):
      result['inputs'] = [_png_data_url(pixels) for pixels in seen]
    return JSONResponse(result)

  async def http_error(request: Request, error: HTTPException) -> JSONResponse:
    return JSONResponse({'error': error.detail}, error.status_code, headers=error.headers)

  async def server_error(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse({'error': 'internal error; the server log has the details'}, 500)

  async def went_away(request: Request, error: ClientDisconnect) -> Response:
    return Response(status_code=CLIENT_CLOSED)  # Nobody reads it; the access log line says 499.

  routes = [
    Route('/', index),
    Route('/favicon.ico', favicon),
    Route('/api/health', health),
    Route('/api/model', model),
    Route('/api/predict', predict_route, methods=['POST']),
  ]
  app = Starlette(
    routes=routes,
    exception_handlers={
      HTTPException: http_error,
      ClientDisconnect: went_away,
      Exception: server_error,
    },
  )
  return _LogRequests(_Guard(app, allowed_hosts(host)))


def allowed_hosts(host: str) -> frozenset[str]:
  """The Host header names (without port) that reach this server: loopback's and `host`.

  Listening on every interface (0.0.0.0 or ::) adds this machine's name and addresses.
  """
  names = {'localhost', '127.0.0.1', '::1', host.strip('[]').lower()}
  if host in ('0.0.0.0', '::', ''):
    with contextlib.suppress(OSError):
      name, aliases, addresses = socket.gethostbyname_ex(socket.gethostname())
      names.update(n.lower() for n in (name, *aliases, *addresses))
  return frozenset(names)


def host_name(header: str) -> str:
  """The name in a Host header, without its port: 'localhost:8000' -> 'localhost', '[::1]:80'."""
  header = header.strip().lower()
  if header.startswith('['):
    return header[1 : header.find(']')] if ']' in header else header
  return header.rsplit(':', 1)[0] if header.count(':') == 1 else header


def _cross_site(headers: dict[bytes, bytes], host: str) -> bool:
  """Whether the request comes from a page of another host than the one it is sent to."""
  origin = headers.get(b'origin', b'').decode('latin-1').strip().lower()
  return bool(origin) and origin.partition('://')[2] != host.strip().lower()


class _Guard:
  """ASGI middleware: 400 for a foreign Host header, 403 for a cross-site POST; nosniff on
  every reply."""

  def __init__(self, app, hosts: frozenset[str]):
    self.app = app
    self.hosts = hosts

  async def __call__(self, scope, receive, send):
    if scope['type'] != 'http':
      return await self.app(scope, receive, send)

    async def sending(message):
      if message['type'] == 'http.response.start':
        headers = [(k, v) for k, v in message.get('headers', []) if k.lower() != NOSNIFF[0]]
        message = {**message, 'headers': [*headers, NOSNIFF]}
      await send(message)

    headers = dict(scope.get('headers', []))
    host = headers.get(b'host', b'').decode('latin-1')
    if host_name(host) not in self.hosts:
      refused = JSONResponse(
        {'error': f'unknown host {host!r}: open the page at the address the server printed'}, 400
      )
    elif scope['method'] == 'POST' and _cross_site(headers, host):
      refused = JSONResponse(
        {'error': 'a POST from a page of another site is refused: use the page this server shows'},
        403,
      )
    else:
      return await self.app(scope, receive, sending)
    await refused(scope, receive, sending)


class _LogRequests:
  """ASGI middleware: one log line per request (client, method, path, status, size, time)."""

  def __init__(self, app):
    self.app = app

  async def __call__(self, scope, receive, send):
    if scope['type'] != 'http':
      return await self.app(scope, receive, send)
    start, status, size, started = time.perf_counter(), 500, 0, False

    async def sending(message):
      nonlocal status, size, started
      if message['type'] == 'http.response.start':
        status, started = message['status'], True
      elif message['type'] == 'http.response.body':
        size += len(message.get('body', b''))
      await send(message)

    try:
      await self.app(scope, receive, sending)
    except asyncio.CancelledError:  # Cut at shutdown: the client learns why, in JSON.
      if not started:
        stopping_ = JSONResponse({'error': 'the server is stopping; send it again later'}, 503)
        with contextlib.suppress(Exception):
          await stopping_(scope, receive, sending)
      status = 503
    finally:
      client = scope.get('client') or ('-', 0)
      logging.info(
        '%s %s %s %d %dB %.1fms',
        client[0],
        scope['method'],
        scope['path'],
        status,
        size,
        1000 * (time.perf_counter() - start),
      )


def _listen(host: str, port: int) -> socket.socket:
  """A bound socket (port 0: any free one), so that the real address can be logged."""
  family = socket.AF_INET6 if ':' in host else socket.AF_INET
  try:
    return socket.create_server((host, port), family=family)
  except OSError as error:
    raise UserError(f'cannot listen on {host}:{port} ({error}); pick another --port') from None


def run(workdir: str, host: str, port: int) -> int:
  """Serves the run's latest checkpoint until a signal, then ends the process with its status.

  uvicorn takes SIGINT and SIGTERM while it serves and raises them again once it has stopped;
  SIGHUP is passed to it the same way.
  """
  workdir = files.path(workdir)  # A directory, or gs://bucket/path.
  config, info, model, params = checkpoint.restore_for_inference(workdir)
  sock = _listen(host, port)
  batcher = Batcher(model, params, info).start()
  app = make_app(workdir, config, info, params, batcher, host)
  name, bound_port = sock.getsockname()[:2]
  url = f'http://{f"[{name}]" if ":" in name else name}:{bound_port}/'
  if not _is_loopback(host):
    logging.warning(
      'Listening on %s: anyone who can reach this machine can use the model (no login, no'
      ' encryption). Use the default --host=127.0.0.1 unless that is what you want.',
      host,
    )
  if info.is_digits and not (workdir / outliers.REFUSAL_FILE).exists():
    logging.warning(
      'This model was not trained on non-digits: it may read a shape or a scribble as a digit.'
      " To read people's digits, serve a run of configs/reader.py."
    )
  logging.info('Serving %s on %s (Ctrl-C stops).', workdir, url)
  server = uvicorn.Server(
    uvicorn.Config(
      app,
      log_config=None,
      access_log=False,
      timeout_graceful_shutdown=deadlines.SERVE_SHUTDOWN_SECONDS,
      loop='asyncio',  # uvloop would take the signal wake-up descriptor from the watchdog.
    )
  )

  def hang_up(signum: int, frame) -> None:  # uvicorn stops gracefully on SIGINT and SIGTERM.
    stopping.received.append(signum)
    server.handle_exit(signum, frame)

  if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # Not under nohup.
    signal.signal(signal.SIGHUP, hang_up)
  # The watchdog ends the process 2 s after the requests' time, whatever still runs.
  stopping.stop_seconds = deadlines.SERVE_SHUTDOWN_SECONDS + 2
  std_logging.getLogger('uvicorn.error').addFilter(_CancelledEcho())
  try:
    server.run(sockets=[sock])
  except KeyboardInterrupt:  # The signal uvicorn raises again once it has stopped.
    pass
  finally:
    batcher.close()
    sock.close()
  if not stopping.received:
    return 0
  logging.info('Stopped by %s.', signal.Signals(stopping.received[0]).name)
  # Nothing is left to write: skip Python's teardown of JAX (a second or more on a busy CPU),
  # so that a stop takes SERVE_SHUTDOWN_SECONDS and little more.
  sys.stderr.flush()
  os._exit(stopping.exit_status())


class _CancelledEcho(std_logging.Filter):
  """Drops uvicorn's error line on requests cut at shutdown: each has its 503 line already."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return 'timeout graceful shutdown exceeded' not in record.getMessage()


def _is_loopback(host: str) -> bool:
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:
    return host == 'localhost'
