"""A self-contained inference artifact: `python main.py --mode=export --workdir=DIR`.

Writes DIR.jax beside the run directory (or --export_file), never into it: a serialized
`jax.export.Exported` of images -> probabilities with the trained weights inside, lowered for
CPU, CUDA and TPU. Loading it needs only JAX, not this codebase, its config or its
checkpoints; JAX releases of about the next 6 months load it (its backward-compatibility
window), so export again after upgrading past that:

  import jax
  import numpy as np

  with open('DIR.jax', 'rb') as f:
    model = jax.export.deserialize(f.read())
  images = np.zeros((5, 28, 28, 1), np.uint8)  # Any batch size; the run's image shape
  probabilities = model.call(images)  # float32 (5, classes)
  digits = probabilities.argmax(axis=-1)

For photos or scans of digits, mlp/reader/preprocess.py (NumPy and Pillow only) makes such inputs.
"""

import os
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import logging

from input_pipeline.errors import UserError
from mlp.core import steps
from mlp.machinery import checkpoint, files

PLATFORMS = ('cpu', 'cuda', 'tpu')


def export(model: steps.Model, params, image_shape: tuple[int, ...]) -> jax.export.Exported:
  """probabilities(images) for uint8 images of any batch size, the parameters as constants."""
  images = jax.ShapeDtypeStruct((*jax.export.symbolic_shape('b'), *image_shape), jnp.uint8)
  function = jax.jit(lambda images: steps.probabilities(model, params, images))
  return jax.export.export(function, platforms=PLATFORMS)(images)


def default_path(workdir: str | os.PathLike) -> files.AnyPath:
  """<workdir>.jax, beside the run (in its bucket, for one in a bucket): read-only modes never
  write into a run directory."""
  workdir = files.path(workdir)
  return workdir.with_name(workdir.name + '.jax')


def check_target(workdir: str | os.PathLike, path: files.AnyPath, overwrite: bool) -> None:
  """Refuses, before any work, a path inside the run, a directory, or a file to keep."""
  if _inside(path, files.path(workdir)):
    raise UserError(f'--export_file={path} is inside the run directory; write it elsewhere.')
  if path.is_dir():
    raise UserError(f'--export_file={path} is a directory; name a file, such as {path}/model.jax.')
  if path.exists() and not overwrite:
    raise UserError(f'{path} exists; add --overwrite to replace it, or name another --export_file.')


def _inside(path: files.AnyPath, directory: files.AnyPath) -> bool:
  if files.in_bucket(path) or files.in_bucket(directory):
    return os.fspath(path).startswith(os.fspath(directory).rstrip('/') + '/')
  return Path(path).resolve().is_relative_to(Path(directory).resolve())


def run(
  workdir: str | os.PathLike, path: str | os.PathLike | None = None, overwrite: bool = False
) -> files.AnyPath:
  """Exports the latest checkpoint of a workdir to path (default_path); returns the path."""
  path = files.path(path) if path else default_path(workdir)
  check_target(workdir, path, overwrite)
  _, info, model, params = checkpoint.restore_for_inference(workdir)
  serialized = export(model, params, info.image_shape).serialize()
  if files.in_bucket(path):
    files.write_atomic(path, serialized)  # One upload: whole or absent.
  else:
    _write_file(path, serialized)
  logging.info(
    'Wrote %s (%d bytes); see mlp/reader/export.py for how to load it.', path, len(serialized)
  )
  return path


def _write_file(path: Path, data: bytes) -> None:
  try:
    with files.beside(path) as partial:
      partial.write_bytes(data)
      partial.replace(path)  # Atomic: a reader never sees half a file.
  except OSError as error:
    raise UserError(f'Cannot write {path}: {error.strerror or error}.') from None
