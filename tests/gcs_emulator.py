"""A local GCS on loopback for the tests: gcp-storage-emulator, with generation preconditions.

The emulator ignores `ifGenerationMatch`, the bucket's compare-and-swap that the workdir lock
and orbax's OCDBT writes rely on; this adds it to uploads and deletes (412 when it fails), as
GCS answers. It also serves on threads, one request at a time: its one thread with a backlog
of 5 connections refuses some of the many that tensorstore opens at once.

Run as a script: `python tests/gcs_emulator.py PORT DATA_DIR BUCKET`. It serves until killed
and keeps objects in DATA_DIR, so a restarted emulator has them all.
"""

import functools
import http
import http.server
import os
import sys
import threading

from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_ONE_AT_A_TIME = threading.Lock()  # The emulator's storage is not thread-safe.


class _ThreadingServer(http.server.ThreadingHTTPServer):
  request_queue_size = 256


def _object_name(request) -> str | None:
  if 'object_id' in request.params:
    return request.params['object_id']
  if 'name' in request.query:
    return request.query['name'][0]
  data = request.data
  return data.get('meta', {}).get('name') if isinstance(data, dict) else None


def _conditional(handler):
  """handler, refused (412) where ifGenerationMatch names a generation other than the live one."""

  def checked(request, response, storage, *args, **kwargs):
    wanted = request.query.get('ifGenerationMatch', [None])[0]
    if wanted is not None:
      try:
        generation = storage.get_file_obj(request.params['bucket_name'], _object_name(request))[
          'generation'
        ]
      except NotFound:
        generation = '0'
      if generation != wanted:
        response.status = http.HTTPStatus.PRECONDITION_FAILED
        response.json({'error': {'code': 412, 'message': 'Precondition Failed'}})
        return None
    return handler(request, response, storage, *args, **kwargs)

  return checked


def _with_generation(handler):
  """handler, with the generation headers that GCS sends with an object's bytes.

  Readers (tensorstore, google-cloud-storage) take the object's generation from them.
  """

  def download(request, response, storage, *args, **kwargs):
    try:
      live = storage.get_file_obj(request.params['bucket_name'], request.params['object_id'])
      response['x-goog-generation'] = live['generation']
      response['x-goog-metageneration'] = live.get('metageneration', '1')
    except NotFound:
      pass
    return handler(request, response, storage, *args, **kwargs)

  return download


def _add_preconditions() -> None:
  wrapped = {f: _conditional(f) for f in (objects.insert, objects.delete, objects.xml_upload)}
  wrapped[objects.download] = _with_generation(objects.download)
  wrapped[objects.get] = _with_generation(objects.get)  # alt=media reads, as tensorstore's.
  for _, handlers in server.HANDLERS:
    for method, handler in handlers.items():
      handlers[method] = wrapped.get(handler, handler)
  objects.insert = wrapped[objects.insert]  # The router's fallback for uploads.


def _serve_on_threads() -> None:
  handle = server.Router.handle

  @functools.wraps(handle)
  def one_at_a_time(self, method):
    with _ONE_AT_A_TIME:  # A condition and the write it guards happen as one, too.
      return handle(self, method)

  server.Router.handle = one_at_a_time
  server.server.HTTPServer = _ThreadingServer


def main(port: str, data_dir: str, bucket: str) -> None:
  _add_preconditions()
  _serve_on_threads()
  os.makedirs(data_dir, exist_ok=True)
  server.create_server('127.0.0.1', int(port), False, bucket, data_dir).run()


if __name__ == '__main__':
  main(*sys.argv[1:])
