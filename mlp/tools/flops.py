"""FLOPs of a training step, the device's peak, and how much of it training uses.

The FLOPs and bytes come from XLA's cost analysis of one compiled train_step, not of the
epoch program: XLA counts a loop body once whatever its trip count, so a whole-epoch scan
would read as two steps (one unrolled pair). The peak comes from a table of vendors' dense
figures for accelerators; a CPU has no such figure, so its peak is measured with a matmul.
"""

import functools
import re
import time

import jax
import jax.numpy as jnp
import ml_collections

from input_pipeline import DatasetInfo
from mlp.core import build, steps

# Dense (no sparsity) peak FLOP/s of one chip, by compute dtype at JAX's default matmul
# precision: float32 matmuls run as one bfloat16 pass on TPUs and as TF32 on NVIDIA tensor
# cores from Ampere on (T4, Turing, has neither bfloat16 nor TF32: its FP32 figure).
# Matched in order, as whole words, against jax.Device.device_kind; the first match wins.
_TERA = 1e12
PEAKS = (
  # Google Cloud TPU docs, "TPU v4" / "v5e" / "v5p" / "v6e" pages: peak bf16 compute per chip.
  (('TPU v4',), {'bfloat16': 275, 'float32': 275}, 'cloud.google.com/tpu/docs/v4'),
  (('TPU v5 lite', 'TPU v5e'), {'bfloat16': 197, 'float32': 197}, 'cloud.google.com/tpu/docs/v5e'),
  (('TPU v5p', 'TPU v5'), {'bfloat16': 459, 'float32': 459}, 'cloud.google.com/tpu/docs/v5p'),
  (('TPU v6 lite', 'TPU v6e'), {'bfloat16': 918, 'float32': 918}, 'cloud.google.com/tpu/docs/v6e'),
  # NVIDIA datasheets; the sparsity figures they headline are twice these.
  (('A100',), {'bfloat16': 312, 'float32': 156}, 'NVIDIA A100 Tensor Core GPU datasheet'),
  (('H100 PCIe',), {'bfloat16': 756, 'float32': 378}, 'NVIDIA H100 Tensor Core GPU datasheet'),
  (
    ('H100 80GB HBM3', 'H100 SXM'),
    {'bfloat16': 989, 'float32': 494},
    'NVIDIA H100 Tensor Core GPU datasheet (SXM)',
  ),
  (('L4',), {'bfloat16': 121, 'float32': 60}, 'NVIDIA L4 Tensor Core GPU datasheet'),
  (('T4',), {'bfloat16': 8.1, 'float32': 8.1}, 'NVIDIA T4 Tensor Core GPU datasheet (FP32)'),
)


def step_cost(
  config: ml_collections.ConfigDict, info: DatasetInfo, batch_size: int
) -> dict[str, float]:
  """XLA's count of FLOPs and bytes accessed by one training step on one global batch.

  Compiled for a single device, so the figures are the whole step's, however many devices
  share it in training.
  """
  model, params = build.build_model(config, info, steps_per_epoch=1)
  state = jax.eval_shape(lambda p: build.init_state(config, model, p), params)
  batch = (
    jax.ShapeDtypeStruct((batch_size, *info.image_shape), jnp.uint8),
    jax.ShapeDtypeStruct((batch_size,), jnp.int32),
    jax.ShapeDtypeStruct((batch_size,), jnp.float32),
  )
  step = jax.jit(functools.partial(steps.train_step, model))
  cost = step.lower(state, *batch).compile().cost_analysis()
  return {'flops': cost['flops'], 'bytes_accessed': cost['bytes accessed']}


def table_peak(device_kind: str, dtype: str) -> tuple[float, str] | None:
  """(FLOP/s of one chip, its source) for a device kind in PEAKS, else None."""
  for patterns, peaks, source in PEAKS:
    if any(re.search(rf'\b{pattern}\b', device_kind) for pattern in patterns):
      return peaks[dtype] * _TERA, source
  return None


def measure_matmul_peak(dtype: str, size: int = 1024, repeats: int = 10) -> float:
  """FLOP/s of the best of `repeats` square matmuls: what this device reaches at best."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.dtype(dtype))
  matmul = jax.jit(jnp.matmul)
  matmul(a, a).block_until_ready()  # Compile and warm up.
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 / best


def peak(dtype: str) -> tuple[float, str]:
  """(Peak FLOP/s of all devices together, where the figure comes from) for a compute dtype.

  Several CPU devices are one machine's cores split up, so the CPU peak is not multiplied.
  """
  device = jax.devices()[0]
  known = table_peak(device.device_kind, dtype)
  if known is not None:
    return known[0] * jax.device_count(), known[1]
  return measure_matmul_peak(dtype), f'measured: best {dtype} 1024x1024 matmul in this run'


def peak_memory_bytes() -> int | None:
  """The most memory any local device has held, where the backend reports it (not CPU)."""
  stats = [device.memory_stats() for device in jax.local_devices()]
  peaks = [s['peak_bytes_in_use'] for s in stats if s and 'peak_bytes_in_use' in s]
  return max(peaks) if peaks else None
