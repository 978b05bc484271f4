"""One command for a new machine: does training work there, and how fast is it?

On a GPU or TPU host (or a CPU, where it also runs) it reports the devices, trains a few
epochs and checks the test accuracy, times training against batch size in float32 and
bfloat16 with the share of the peak FLOP/s, and compares one device with all of them (one
process). It prints one summary table and exits non-zero if training did not learn.
"""

import statistics
import tempfile

import jax
import ml_collections
from absl import logging

import input_pipeline
from mlp.core import configuration, train
from mlp.machinery import devices
from mlp.tools import benchmark, fields, flops

CHECK_EPOCHS = 2
# The default MLP reaches about 95% after 2 epochs; below this something is broken.
MIN_ACCURACY = 0.9
BATCH_SIZES = (100, 1000, 10000)  # Unless config.benchmark.batch_sizes lists others.
DTYPES = ('float32', 'bfloat16')


def _training_row(config: ml_collections.ConfigDict) -> tuple[tuple[str, str], bool]:
  short = config.copy_and_resolve_references()
  short.optim.num_epochs, short.run.checkpoint_every_epochs = CHECK_EPOCHS, 0
  with tempfile.TemporaryDirectory() as workdir:
    accuracy = train.train_and_evaluate(short, workdir)['test_accuracy']
  ok = accuracy >= MIN_ACCURACY
  verdict = 'ok' if ok else f'FAILED, expected at least {MIN_ACCURACY:.0%}'
  return (f'training, {CHECK_EPOCHS} epochs', f'test accuracy {accuracy:.2%}: {verdict}'), ok


def _curve_rows(config: ml_collections.ConfigDict, split, info) -> list[tuple[str, str]]:
  rows = []
  for dtype in DTYPES:
    peak = flops.peak(dtype)
    for batch_size in tuple(config.benchmark.batch_sizes) or BATCH_SIZES:
      sized = config.copy_and_resolve_references()
      sized.optim.batch_size, sized.run.compute_dtype = batch_size, dtype
      result = benchmark.measure(sized, split, info, peak)
      rows.append(
        (
          f'{dtype}, batch {batch_size}',
          f'{result["examples_per_sec"]:,.0f} examples/s,'
          f' {result["flops_per_sec"] / 1e9:,.1f} GFLOP/s = {result["utilization"]:.1%} of peak',
        )
      )
  return rows


def _scaling_row(config: ml_collections.ConfigDict, split, info) -> tuple[str, str]:
  """Examples/s on the first device alone and on all, at the largest batch of the curve."""
  sized = config.copy_and_resolve_references()
  sized.optim.batch_size = max(tuple(config.benchmark.batch_sizes) or BATCH_SIZES)
  rates = []
  for mesh in (devices.make_mesh(jax.devices()[:1]), devices.make_mesh()):
    time_epoch, *_ = benchmark.epoch_timer(sized, split, info, mesh=mesh)
    seconds = statistics.median(time_epoch() for _ in range(config.benchmark.repeats))
    rates.append(len(split) / seconds)
  return (
    f'1 against {jax.device_count()} devices, batch {sized.optim.batch_size}',
    f'{rates[0]:,.0f} against {rates[1]:,.0f} examples/s: {rates[1] / rates[0]:.2f}x',
  )


def run(config: ml_collections.ConfigDict) -> int:
  """Prints the summary table on stdout; returns 1 if training missed MIN_ACCURACY, else 0."""
  configuration.validate(config)
  configuration.check(config, fields.paths('benchmark'))
  for batch_size in tuple(config.benchmark.batch_sizes) or BATCH_SIZES:
    devices.check_batch_size(batch_size)
  device = jax.devices()[0]
  rows = [
    (
      'devices',
      f'{jax.device_count()} x {device.device_kind} ({jax.default_backend()}),'
      f' {jax.process_count()} process(es), JAX {jax.__version__}',
    )
  ]
  training, ok = _training_row(config)
  rows.append(training)
  split, _ = input_pipeline.load_train_split(config)
  info = input_pipeline.DatasetInfo.of(config.data.name, split)
  rows += _curve_rows(config, split, info)
  if jax.device_count() > 1 and jax.process_count() == 1:
    rows.append(_scaling_row(config, split, info))
  memory = flops.peak_memory_bytes()
  rows.append(('peak device memory', 'not reported' if memory is None else f'{memory:,} bytes'))
  width = max(len(name) for name, _ in rows)
  table = '\n'.join(f'{name:<{width}}  {value}' for name, value in rows)
  if devices.is_main_process():
    print(f'Accelerator check\n{table}', flush=True)
  if not ok:
    logging.error('Training did not reach %.0f%% test accuracy.', 100 * MIN_ACCURACY)
  return 0 if ok else 1
