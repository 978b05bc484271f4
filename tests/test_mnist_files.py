"""MNIST from its original files, as on a machine without TensorFlow; never on the network.

Small generated files in MNIST's IDX format are served from a loopback HTTP server, or left in
the download manager's manual directory, under checksums registered for the test; tfds's MNIST
builder URL is pointed at them.
"""

import functools
import gzip
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from input_pipeline import mnist_files
from input_pipeline.errors import UserError

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
SIZES = {'train': 30, 'test': 12}
# The first ten labels of t10k-labels-idx1-ubyte, the original test split's order.
FIRST_ORIGINAL_TEST_LABELS = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def write_idx(path: Path, array: np.ndarray) -> Path:
  header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, '>u4').tobytes()
  path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))
  return path


def tfds_order(split: str, num_examples: int) -> np.ndarray:
  """The order tfds writes examples in, as its writer documents it: by MD5(split + key)."""
  digest = lambda i: hashlib.md5(f'{split}{i}'.encode()).hexdigest()  # noqa: E731
  return np.array(sorted(range(num_examples), key=digest))


def write_fake_mnist(directory: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Random images and labels in the original order, as the four files tfds downloads."""
  directory.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  arrays = {}
  for split, (images_name, labels_name) in mnist_files.FILES.items():
    images = rng.integers(0, 256, (SIZES[split], 28, 28), np.uint8)
    labels = rng.integers(0, 10, SIZES[split], np.uint8)
    write_idx(directory / images_name, images)
    write_idx(directory / labels_name, labels)
    arrays[split] = images, labels
  return arrays


def checksums(directory: Path, base_url: str) -> dict[str, list]:
  """URL: [size, sha256, filename] of each file, as tfds's checksums files list them."""
  return {
    base_url + path.name: [
      path.stat().st_size,
      hashlib.sha256(path.read_bytes()).hexdigest(),
      path.name,
    ]
    for path in sorted(directory.iterdir())
  }


def register(url_infos: dict[str, list], setattr=setattr) -> None:
  """Makes tfds's download manager check downloads against these sums too."""
  infos = {
    url: tfds.download.checksums.UrlInfo(size=size, checksum=checksum, filename=name)
    for url, (size, checksum, name) in url_infos.items()
  }
  manager = functools.partial(tfds.download.DownloadManager, url_infos=infos)
  setattr(tfds.download, 'DownloadManager', manager)


def closed_port_url() -> str:
  with socket.socket() as probe:
    probe.bind(('127.0.0.1', 0))
    port = probe.getsockname()[1]
  return f'http://127.0.0.1:{port}/'


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
  def log_message(self, *args) -> None:
    pass


@pytest.fixture
def served(tmp_path, monkeypatch):
  """(base URL, the fake arrays): fake MNIST files on a loopback server; tfds's URL points there."""
  directory = tmp_path / 'served'
  arrays = write_fake_mnist(directory)
  handler = functools.partial(_QuietHandler, directory=str(directory))
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  base_url = f'http://127.0.0.1:{server.server_address[1]}/'
  monkeypatch.setenv('NO_PROXY', '127.0.0.1')
  monkeypatch.setattr(tfds.builder_cls('mnist'), 'URL', base_url)
  yield base_url, arrays
  server.shutdown()
  thread.join()


def expected(arrays, split: str) -> tuple[np.ndarray, np.ndarray]:
  images, labels = arrays[split]
  order = tfds_order(split, len(labels))
  return images[order, ..., None], labels[order].astype(np.int32)


def _worker(base_url: str, url_infos_json: str, tmp_path: str) -> None:
  """Loads both splits through input_pipeline with TensorFlow hidden, then again from cache."""
  from test_without_tensorflow import hide_tensorflow

  hide_tensorflow()
  import input_pipeline

  tfds.builder_cls('mnist').URL = base_url
  register(json.loads(url_infos_json))
  data_dir, cache_dir = Path(tmp_path) / 'tfds', Path(tmp_path) / 'cache'
  for split in SIZES:
    loaded = input_pipeline.load_split('mnist', split, str(data_dir), cache_dir)
    np.savez(Path(tmp_path) / f'{split}.npz', images=loaded.images, labels=loaded.labels)
  downloads = sorted(p.name for p in (data_dir / 'downloads').iterdir())
  shutil.rmtree(data_dir / 'downloads')
  again = input_pipeline.load_split('mnist', 'test', str(data_dir), cache_dir)  # From the cache.
  tensorflow = sorted(m for m in sys.modules if m.partition('.')[0] == 'tensorflow')
  print(
    json.dumps(
      {
        'tensorflow_modules': tensorflow,
        'downloads': downloads,
        'cache': sorted(p.name for p in (cache_dir / 'data').iterdir()),
        'again_matches': bool(
          (again.images == np.load(Path(tmp_path) / 'test.npz')['images']).all()
        ),
      }
    )
  )


def test_first_run_without_tensorflow_downloads_checks_decodes_and_caches(served, tmp_path):
  base_url, arrays = served
  url_infos = checksums(tmp_path / 'served', base_url)
  env = {**os.environ, 'PYTHONPATH': str(ROOT), 'NO_PROXY': '127.0.0.1'}
  env.pop('TFDS_DATA_DIR', None)
  args = [sys.executable, __file__, base_url, json.dumps(url_infos), str(tmp_path)]
  done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(done.stdout.splitlines()[-1])
  assert result['tensorflow_modules'] == []
  assert sum(name.endswith('.gz') for name in result['downloads']) == 4  # Kept for tfds.
  assert [name.rsplit('-', 1)[0] for name in result['cache']] == [
    'mnist-files-test',
    'mnist-files-train',
  ]
  assert result['again_matches']
  for split in SIZES:
    with np.load(tmp_path / f'{split}.npz') as loaded:
      images, labels = expected(arrays, split)
      np.testing.assert_array_equal(loaded['images'], images)
      np.testing.assert_array_equal(loaded['labels'], labels)
      assert loaded['images'].dtype == np.uint8 and loaded['labels'].dtype == np.int32


def test_a_download_that_fails_its_checksum_is_refused(served, tmp_path, monkeypatch):
  base_url, _ = served
  url_infos = checksums(tmp_path / 'served', base_url)
  for info in url_infos.values():
    info[1] = hashlib.sha256(b'another file').hexdigest()
  register(url_infos, monkeypatch.setattr)
  with pytest.raises(UserError, match='does not match the checksum'):
    mnist_files.load('test', tmp_path / 'downloads')


def test_urls_without_registered_checksums_are_not_downloaded(served, tmp_path):
  with pytest.raises(UserError, match='Missing checksums'):
    mnist_files.load('test', tmp_path / 'downloads')
  assert not list((tmp_path / 'downloads').glob('*.gz'))


def test_files_in_the_manual_directory_need_no_network(tmp_path, monkeypatch):
  manual = tmp_path / 'downloads' / 'manual'
  arrays = write_fake_mnist(manual)
  base_url = closed_port_url()
  monkeypatch.setattr(tfds.builder_cls('mnist'), 'URL', base_url)
  register(checksums(manual, base_url), monkeypatch.setattr)
  images, labels = mnist_files.load('train', tmp_path / 'downloads')
  np.testing.assert_array_equal(images, expected(arrays, 'train')[0])
  np.testing.assert_array_equal(labels, expected(arrays, 'train')[1])


def test_no_network_fails_at_once_and_says_where_files_can_go(tmp_path, monkeypatch):
  monkeypatch.setattr(tfds.builder_cls('mnist'), 'URL', closed_port_url())
  start = time.perf_counter()
  with pytest.raises(UserError, match=f'No network .* in {tmp_path / "downloads" / "manual"}') as e:
    mnist_files.load('test', tmp_path / 'downloads')
  assert '--config.data.dir or TFDS_DATA_DIR' in str(e.value)
  assert 'an array_record copy needs no TensorFlow' in str(e.value)
  assert time.perf_counter() - start < 10  # tfds's downloader alone retries for minutes.


def test_the_real_downloads_are_checked_against_tfds_registered_checksums():
  registered = tfds.download.checksums.get_all_url_infos()
  for split in SIZES:
    for url, name in zip(mnist_files.urls(split), mnist_files.FILES[split], strict=True):
      assert url.endswith('/' + name) and registered[url].filename == name


@pytest.mark.parametrize(
  'content',
  [
    b'not gzip',
    gzip.compress(b'\0\0\x0d\x01' + bytes(8)),
    gzip.compress(b'\0\0\x08\x01\0\0\0\x05ab'),
    gzip.compress(b'\0\0\x08\x03\0\0'),
  ],
  ids=['not-gzip', 'float-type', 'truncated', 'short-header'],
)
def test_other_files_are_refused_with_their_name(tmp_path, content):
  path = tmp_path / 'file.gz'
  path.write_bytes(content)
  with pytest.raises(UserError, match=str(path)):
    mnist_files.read_idx(path)


def test_decode_refuses_labels_that_do_not_match_the_images(tmp_path):
  images = write_idx(tmp_path / 'images.gz', np.zeros((3, 28, 28), np.uint8))
  labels = write_idx(tmp_path / 'labels.gz', np.zeros(4, np.uint8))
  with pytest.raises(UserError, match='one label per image'):
    mnist_files.decode('test', images, labels)


if __name__ == '__main__':
  _worker(*sys.argv[1:])
