"""A self-contained inference artifact: `python main.py --mode=export --workdir=DIR`.

Writes DIR/export/model.jax, a serialized `jax.export.Exported` of images -> probabilities with
the trained weights inside, lowered for CPU, CUDA and TPU. Loading it needs only JAX, not this
codebase, its config or its checkpoints; JAX releases of about the next 6 months load it (its
backward-compatibility window), so export again after upgrading past that:

  import jax
  import numpy as np

  with open('DIR/export/model.jax', 'rb') as f:
    model = jax.export.deserialize(f.read())
  images = np.zeros((5, 28, 28, 1), np.uint8)  # Any batch size; the run's image shape
  probabilities = model.call(images)  # float32 (5, classes)
  digits = probabilities.argmax(axis=-1)

For photos or scans of digits, mlp/preprocess.py (NumPy and Pillow only) makes such inputs.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
from absl import logging

from mlp import checkpoint, steps

EXPORT_DIR = 'export'
EXPORT_FILE = 'model.jax'
PLATFORMS = ('cpu', 'cuda', 'tpu')


def export(model: steps.Model, params, image_shape: tuple[int, ...]) -> jax.export.Exported:
  """probabilities(images) for uint8 images of any batch size, the parameters as constants."""
  images = jax.ShapeDtypeStruct((*jax.export.symbolic_shape('b'), *image_shape), jnp.uint8)
  function = jax.jit(lambda images: steps.probabilities(model, params, images))
  return jax.export.export(function, platforms=PLATFORMS)(images)


def run(workdir: str | Path) -> Path:
  """Exports the latest checkpoint of a workdir; returns the file written."""
  _, info, model, params = checkpoint.restore_for_inference(Path(workdir))
  path = Path(workdir) / EXPORT_DIR / EXPORT_FILE
  path.parent.mkdir(exist_ok=True)
  partial = path.with_suffix('.tmp')
  partial.write_bytes(export(model, params, info.image_shape).serialize())
  partial.replace(path)  # Atomic: a reader never sees half a file.
  logging.info(
    'Wrote %s (%d bytes); see mlp/export.py for how to load it.', path, path.stat().st_size
  )
  return path
