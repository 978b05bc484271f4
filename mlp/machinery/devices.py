"""The device mesh, how arrays are laid out on it, and joining a run of several processes.

One 1-D mesh over every device of every process, axis 'data': batches are split along it,
parameters and optimizer state are replicated. On one CPU this is a mesh of one. With several
processes (hosts), each holds the whole dataset, computes the same global order and places
only the rows its own devices take, so results do not depend on how many processes there are.
"""

import math
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from input_pipeline.errors import UserError
from mlp.machinery import deadlines

DATA_AXIS = 'data'
# Read when the matching argument of initialize_distributed is None. JAX itself also reads
# JAX_COORDINATOR_ADDRESS; the other two are ours.
ENV_COORDINATOR_ADDRESS = 'JAX_COORDINATOR_ADDRESS'
ENV_NUM_PROCESSES = 'JAX_NUM_PROCESSES'
ENV_PROCESS_ID = 'JAX_PROCESS_ID'


def initialize_distributed(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  auto: bool = False,
) -> bool:
  """Joins a multi-process run, if one is configured, before anything touches a device.

  Arguments left None are read from the environment (ENV_*). If none is set anywhere, only
  auto=True initialises: JAX then detects the cluster itself (Cloud TPU pods, SLURM, Open MPI).
  Returns whether jax.distributed was initialised. Joining waits for every process for at
  most deadlines.COORDINATOR_SECONDS, then ends the process with one line and status 1: JAX's
  own limit aborts it with a stack dump, and its wait in C cannot be interrupted. A signal
  meanwhile ends it through stopping's watchdog.
  """
  try:
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR_ADDRESS)
    if num_processes is None and os.environ.get(ENV_NUM_PROCESSES):
      num_processes = int(os.environ[ENV_NUM_PROCESSES])
    if process_id is None and os.environ.get(ENV_PROCESS_ID):
      process_id = int(os.environ[ENV_PROCESS_ID])
    if not auto and (coordinator_address, num_processes, process_id) == (None, None, None):
      return False
    if coordinator_address is not None:
      check_address(coordinator_address)
    bound = deadlines.COORDINATOR_SECONDS
    where = coordinator_address or "the cluster's coordinator"
    logging.info('Joining the run at %s (waiting up to %gs for every process).', where, bound)
    late = (
      f'Not every process joined the run at {where} within {bound:g}s; start all '
      f'{num_processes or "of its"} processes with the same --coordinator_address and '
      '--num_processes, or set MLP_COORDINATOR_SECONDS to wait longer.'
    )
    with deadlines.ending_after(bound, late):
      jax.distributed.initialize(
        coordinator_address,
        num_processes,
        process_id,
        initialization_timeout=math.ceil(bound) + 10,  # Ours ends the wait first.
      )
  except ValueError as error:  # A bad number, or JAX naming the missing setting.
    raise UserError(
      f'Cannot start the distributed run ({error}); set --coordinator_address, --num_processes'
      f' and --process_id (or {ENV_COORDINATOR_ADDRESS}, {ENV_NUM_PROCESSES},'
      f' {ENV_PROCESS_ID}), unless the cluster provides them.'
    ) from None
  return True


def check_address(address: str) -> None:
  """The coordinator's address is host:port, the port a number from 1 to 65535."""
  host, colon, port = address.rpartition(':')
  if not (colon and host and port.isdigit() and 0 < int(port) < 65536):
    raise UserError(
      f'The coordinator address {address!r} (--coordinator_address or '
      f"{ENV_COORDINATOR_ADDRESS}) is not host:port; give process 0's host and a free port, "
      'such as 10.0.0.2:1234.'
    )


def is_main_process() -> bool:
  """Process 0 writes the run's files; every process takes part in computing and checkpoints."""
  return jax.process_index() == 0


def make_mesh(mesh_devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """Over mesh_devices (default: all). Auto axis: XLA propagates the batch sharding through the
  on-device gather of a batch."""
  mesh_devices = jax.devices() if mesh_devices is None else list(mesh_devices)
  return jax.make_mesh(
    (len(mesh_devices),),
    (DATA_AXIS,),
    axis_types=(jax.sharding.AxisType.Auto,),
    devices=mesh_devices,
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


def replicate(tree, mesh: jax.sharding.Mesh):
  """Places a pytree that every process holds whole on every device, PRNG keys included.

  jax.device_put cannot send a key to other processes' devices; its raw data it can.
  """
  sharding = replicated(mesh)

  def place(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      data = put(np.asarray(jax.random.key_data(x)), sharding)
      return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    return put(np.asarray(x), sharding)

  return jax.tree.map(place, tree)


def configure_runtime(config) -> None:
  """Process-wide JAX settings from the config: matmul precision and the compilation cache."""
  jax.config.update('jax_default_matmul_precision', config.run.matmul_precision)
  if config.run.compilation_cache:
    from input_pipeline import default_cache_dir

    cache_dir = config.run.cache_dir or default_cache_dir()
    jax.config.update('jax_compilation_cache_dir', str(Path(cache_dir) / 'jax'))
    # CPU compilations take well under the default 1 s threshold; cache them all.
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
