"""A bounded load test of a local `--mode=serve` server: latency and requests/s under concurrency.

Command (with a server running):
  python -m mlp.load_test --url=http://127.0.0.1:8000/ [--image=docs/example_digit.jpg]
      [--requests=400] [--concurrency=50]

It sends a fixed number of POST /api/predict requests, `concurrency` of them in flight at once,
then stops and prints one JSON line: errors, p50/p99 latency in ms, requests/s. It refuses any
host but this machine's loopback: it is not a tool to load someone else's server.
"""

import asyncio
import ipaddress
import json
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
from absl import app, flags

from mlp.errors import UserError


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
  """Posts `body` to url/api/predict `requests` times, `concurrency` at once; the figures."""
  require_loopback(url)
  latencies: list[float] = []
  errors: list[str] = []

  async def worker(client: httpx.AsyncClient, todo: list[int]) -> None:
    while todo:
      todo.pop()
      start = time.perf_counter()
      try:
        response = await client.post('api/predict', content=body)
        if response.status_code != 200:
          errors.append(f'{response.status_code} {response.text[:200]}')
      except httpx.HTTPError as error:
        errors.append(f'{type(error).__name__}: {error}')
      latencies.append(time.perf_counter() - start)

  async def run() -> float:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {'Content-Type': content_type}
    async with httpx.AsyncClient(
      base_url=url, limits=limits, headers=headers, timeout=120
    ) as client:
      todo = list(range(requests))
      start = time.perf_counter()
      await asyncio.gather(*(worker(client, todo) for _ in range(concurrency)))
      return time.perf_counter() - start

  seconds = asyncio.run(run())
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
  app.run(main)
