"""A bounded load test of a local `--mode=serve` server: latency and requests/s under concurrency.

Command (with a server running):
  python -m mlp.reader.serve_load --url=http://127.0.0.1:8000/ [--image=docs/example_digit.jpg]
      [--requests=400] [--concurrency=50]

It sends a fixed number of POST /api/predict requests, `concurrency` of them in flight at once,
then stops and prints one JSON line: errors, p50/p99 latency in ms, requests/s. It refuses any
host but this machine's loopback: it is not a tool to load someone else's server.
"""

import http.client
import ipaddress
import json
import queue
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from absl import app, flags

from input_pipeline.errors import UserError


def require_loopback(url: str) -> None:
  """UserError unless every address the URL's host resolves to is a loopback address."""
  host = urlsplit(url).hostname or ''
  try:
    addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
  except OSError as error:
    raise UserError(f'cannot resolve {host!r} ({error})') from None
  if not all(ipaddress.ip_address(a.split('%')[0]).is_loopback for a in addresses):
    raise UserError(f'{url}: the load test only runs against this machine (127.0.0.1, ::1).')


def measure(
  url: str, body: bytes, content_type: str, requests: int = 400, concurrency: int = 50
) -> dict:
  """Posts `body` to url/api/predict `requests` times, `concurrency` at once; the figures.

  Each of `concurrency` threads keeps one connection open with http.client, a light client:
  an asyncio httpx client, tried first, was itself the bottleneck (28 against 68 requests/s).
  """
  require_loopback(url)
  parts = urlsplit(url)
  path = parts.path.rstrip('/') + '/api/predict'
  todo: queue.SimpleQueue = queue.SimpleQueue()
  for index in range(requests):
    todo.put(index)
  latencies: list[float] = []
  errors: list[str] = []

  def worker() -> None:
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    while True:
      try:
        todo.get_nowait()
      except queue.Empty:
        break
      start = time.perf_counter()
      try:
        connection.request('POST', path, body, {'Content-Type': content_type})
        response = connection.getresponse()
        text = response.read()
        if response.status != 200:
          errors.append(f'{response.status} {text[:200]!r}')
      except (OSError, http.client.HTTPException) as error:
        errors.append(f'{type(error).__name__}: {error}')
        connection.close()  # Reconnects on the next request.
      latencies.append(time.perf_counter() - start)
    connection.close()

  start = time.perf_counter()
  threads = [threading.Thread(target=worker) for _ in range(concurrency)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  seconds = time.perf_counter() - start
  milliseconds = 1000 * np.array(latencies)
  return {
    'requests': requests,
    'concurrency': concurrency,
    'errors': len(errors),
    'first_error': errors[0] if errors else None,
    'p50_ms': round(float(np.percentile(milliseconds, 50)), 1),
    'p99_ms': round(float(np.percentile(milliseconds, 99)), 1),
    'requests_per_s': round(requests / seconds, 1),
    'seconds': round(seconds, 2),
  }


def define_flags() -> None:
  """Its command line; defined only when it runs, so that importing it adds no flags."""
  flags.DEFINE_string('url', 'http://127.0.0.1:8000/', 'The server, on this machine.')
  flags.DEFINE_string('image', 'docs/example_digit.jpg', 'The image every request sends.')
  flags.DEFINE_integer('requests', 400, 'How many requests in all.')
  flags.DEFINE_integer('concurrency', 50, 'How many in flight at once.')


def main(argv: list[str]) -> None:
  del argv
  flags_ = flags.FLAGS
  path = Path(flags_.image)
  suffix = path.suffix.lower().lstrip('.')
  content_type = f'image/{"jpeg" if suffix == "jpg" else suffix}'
  try:
    figures = measure(
      flags_.url, path.read_bytes(), content_type, flags_.requests, flags_.concurrency
    )
  except (UserError, OSError) as error:
    raise SystemExit(f'FATAL {error}') from None
  print(json.dumps(figures))


if __name__ == '__main__':
  define_flags()
  app.run(main)
