"""The device mesh and how arrays are laid out on it.

One 1-D mesh over every device of every process, axis 'data': batches are split along it,
parameters and optimizer state are replicated. On one CPU this is a mesh of one.
"""

from pathlib import Path

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mlp.errors import UserError

DATA_AXIS = 'data'


def make_mesh() -> jax.sharding.Mesh:
  """Auto axis: XLA propagates the batch sharding through the on-device gather of a batch."""
  return jax.make_mesh(
    (jax.device_count(),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,)
  )


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh, batch_axis: int = 0) -> NamedSharding:
  """Splits axis `batch_axis` over the devices (1 for arrays stacked as (steps, batch, ...))."""
  return NamedSharding(mesh, P(*([None] * batch_axis), DATA_AXIS))


def check_batch_size(batch_size: int, name: str = 'batch_size') -> None:
  """A one-line error, with the nearest sizes that work, when devices cannot share a batch."""
  devices = jax.device_count()
  if batch_size % devices:
    lower = max(devices, batch_size // devices * devices)
    raise UserError(
      f'{name}={batch_size} does not divide over {devices} devices; '
      f'use a multiple of {devices}, such as {lower} or {lower + devices}.'
    )


def put(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """Places a host array that every process holds whole; each device takes its own part."""
  return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def configure_runtime(config) -> None:
  """Process-wide JAX settings from the config: matmul precision and the compilation cache."""
  jax.config.update('jax_default_matmul_precision', config.matmul_precision)
  if config.compilation_cache:
    from input_pipeline import default_cache_dir

    cache_dir = config.cache_dir or default_cache_dir()
    jax.config.update('jax_compilation_cache_dir', str(Path(cache_dir) / 'jax'))
    # CPU compilations take well under the default 1 s threshold; cache them all.
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
