"""Steady-state training throughput, measured as JAX experts do.

Compilation is measured from JAX's own compile events and reported apart; a warm-up epoch is
excluded; the clock is read only after block_until_ready; each figure is the median of several
repeats of one epoch. The same run times a baseline (host placement, one jitted step per
NumPy batch, as most JAX examples train) and reports the speedup over it.
"""

import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import ml_collections
from absl import logging

import input_pipeline
from input_pipeline.errors import UserError
from mlp.core import configuration, trainer
from mlp.machinery import devices, limits, lock
from mlp.machinery.run import compile_seconds
from mlp.tools import ab, fields, flops, provenance, sweep, to_target


def epoch_timer(
  config: ml_collections.ConfigDict,
  split: input_pipeline.Split,
  info: input_pipeline.DatasetInfo,
  num_models: int = 1,
  mesh: jax.sharding.Mesh | None = None,
) -> tuple[Callable[[], float], float, int]:
  """Sets up training under config on mesh (default: all devices), runs a warm-up epoch.

  Returns a function that trains one more epoch and returns its seconds, the seconds spent
  compiling and the steps per call that pacing chose. num_models > 1 trains that many models
  (seeds 0, 1, ...) at once, as a sweep's vmapped trials. Several timers can live side by side,
  to alternate settings (mlp/tools/ab.py).
  """
  configs = [config.copy_and_resolve_references() for _ in range(num_models)]
  for seed, trial in enumerate(configs):
    trial.seed = seed if num_models > 1 else config.seed
  steps_per_epoch = trainer.steps_per_epoch(config, split)
  model, values, state = sweep.init_trials(configs, info, steps_per_epoch)
  programs = sweep.trial_programs(model, values, mesh or devices.make_mesh())
  tr, state = trainer.make_trainer(configs[0], programs, state, split)
  compile_before = compile_seconds()
  state, sums = sweep.train_epoch(tr, state, epoch=1)  # Warm-up.
  jax.block_until_ready((state, sums))
  compiling = compile_seconds() - compile_before
  epochs = itertools.count(2)

  def time_epoch() -> float:
    nonlocal state
    start = time.perf_counter()
    state, sums = sweep.train_epoch(tr, state, next(epochs))
    jax.block_until_ready((state, sums))
    return time.perf_counter() - start

  return time_epoch, compiling, tr.steps_per_call


def time_epochs(
  config: ml_collections.ConfigDict,
  split: input_pipeline.Split,
  info: input_pipeline.DatasetInfo,
  num_models: int = 1,
) -> dict:
  """Compile seconds, per-epoch seconds of `repeats` steady-state epochs and pacing's steps per
  call under config."""
  time_epoch, compiling, chunk = epoch_timer(config, split, info, num_models)
  seconds = [time_epoch() for _ in range(config.benchmark.repeats)]
  return {'compile_seconds': compiling, 'epoch_seconds': seconds, 'steps_per_call': chunk}


def measure(
  config: ml_collections.ConfigDict,
  split: input_pipeline.Split,
  info: input_pipeline.DatasetInfo,
  peak: tuple[float, str],
) -> dict:
  """The figures of one config and of the baseline, as one JSON-ready dict.

  peak: (peak FLOP/s of the devices, its source), from flops.peak.
  """
  timed = time_epochs(config, split, info)
  baseline_config = config.copy_and_resolve_references()
  baseline_config.run.placement, baseline_config.run.steps_per_call = 'host', 1
  baseline = time_epochs(baseline_config, split, info)
  steps_per_epoch = trainer.steps_per_epoch(config, split)
  median = statistics.median(timed['epoch_seconds'])
  examples_per_sec = len(split) / median
  baseline_examples_per_sec = len(split) / statistics.median(baseline['epoch_seconds'])
  return {
    'examples_per_sec': examples_per_sec,
    'examples_per_sec_min': len(split) / max(timed['epoch_seconds']),
    'examples_per_sec_max': len(split) / min(timed['epoch_seconds']),
    'examples_per_sec_per_device': examples_per_sec / jax.device_count(),
    'steps_per_sec': steps_per_epoch / median,
    'ms_per_step': 1000 * median / steps_per_epoch,
    'compile_seconds': timed['compile_seconds'],
    'repeats': config.benchmark.repeats,
    'batch_size': config.optim.batch_size,
    'model': config.model,
    'dataset': config.data.name,
    'placement': config.run.placement,
    'steps_per_call': timed['steps_per_call'],  # What pacing chose, not the config's 0 (auto).
    'compute_dtype': config.run.compute_dtype,
    'baseline_examples_per_sec': baseline_examples_per_sec,
    'baseline_compile_seconds': baseline['compile_seconds'],
    'speedup_over_baseline': examples_per_sec / baseline_examples_per_sec,
    **_utilization(config, info, steps_per_epoch / median, peak),
    **_vmapped_models(config, split, info),
    **provenance.machine_facts(),
  }


def _utilization(config, info: input_pipeline.DatasetInfo, steps_per_sec: float, peak) -> dict:
  """FLOPs and bytes per step from XLA, the FLOP/s they make, and their share of the peak."""
  cost = flops.step_cost(config, info, config.optim.batch_size)
  flops_per_sec = cost['flops'] * steps_per_sec
  return {
    'flops_per_step': cost['flops'],
    'bytes_accessed_per_step': cost['bytes_accessed'],
    'flops_per_sec': flops_per_sec,
    'peak_flops_per_sec': peak[0],
    'peak_flops_source': peak[1],
    'utilization': flops_per_sec / peak[0],
    'peak_memory_bytes': flops.peak_memory_bytes(),
  }


def _vmapped_models(
  config: ml_collections.ConfigDict, split: input_pipeline.Split, info: input_pipeline.DatasetInfo
) -> dict:
  """With benchmark.models > 1: model-examples/s of that many models trained at once (vmap)."""
  num_models = config.benchmark.models
  if num_models <= 1:
    return {}

  def model_examples_per_sec(count: int) -> float:
    seconds = time_epochs(config, split, info, count)['epoch_seconds']
    return count * len(split) / statistics.median(seconds)

  one, many = model_examples_per_sec(1), model_examples_per_sec(num_models)
  return {
    'vmapped_models': num_models,
    'model_examples_per_sec': many,
    'single_model_examples_per_sec': one,
    'vmap_speedup': many / one,
  }


def _log_table(result: dict) -> None:
  rows = [
    (
      'examples/s  min / median / max',
      '{examples_per_sec_min:,.0f} / {examples_per_sec:,.0f} / {examples_per_sec_max:,.0f}',
    ),
    ('examples/s per device', '{examples_per_sec_per_device:,.0f}'),
    ('steps/s, ms/step', '{steps_per_sec:,.0f}, {ms_per_step:.3f}'),
    ('compile seconds', '{compile_seconds:.2f}'),
    ('baseline examples/s', '{baseline_examples_per_sec:,.0f} (host, 1 step per call)'),
    ('speedup over baseline', '{speedup_over_baseline:.2f}x'),
    ('FLOPs, bytes per step (XLA)', '{flops_per_step:,.0f}, {bytes_accessed_per_step:,.0f}'),
    (
      'GFLOP/s, of peak',
      '{gflops:,.2f} of {peak_gflops:,.0f} ({peak_flops_source}): {utilization:.2%}',
    ),
    ('peak device memory', '{memory}'),
    *(
      [('models at once, speedup', '{vmapped_models}: {vmap_speedup:.2f}x model-examples/s')]
      if 'vmapped_models' in result
      else []
    ),
    (
      'setup',
      'batch {batch_size}, {placement}, steps_per_call {steps_per_call}, '
      '{device_count} x {device_kind} ({backend}), JAX {jax_version}',
    ),
  ]
  width = max(len(name) for name, _ in rows)
  memory = result['peak_memory_bytes']
  values = {
    **result,
    'gflops': result['flops_per_sec'] / 1e9,
    'peak_gflops': result['peak_flops_per_sec'] / 1e9,
    'memory': 'not reported by this backend' if memory is None else f'{memory / 2**20:,.1f} MiB',
  }
  logging.info(
    'Benchmark, %d repeats of one epoch:\n%s',
    result['repeats'],
    '\n'.join(f'  {name:<{width}}  {value.format(**values)}' for name, value in rows),
  )


def save_curve(results: list[dict], workdir: Path) -> None:
  """throughput.png, .md and .jsonl: examples/s and utilisation against batch size."""
  from matplotlib.figure import Figure  # Only here: importing matplotlib is slow.

  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / 'throughput.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in results))
  rows = [
    f'| {r["batch_size"]} | {r["examples_per_sec"]:,.0f} | {r["baseline_examples_per_sec"]:,.0f}'
    f' | {r["speedup_over_baseline"]:.2f}x | {r["compile_seconds"]:.2f}'
    f' | {r["flops_per_sec"] / 1e9:,.1f} | {r["utilization"]:.1%} |'
    for r in results
  ]
  header = (
    '| batch | examples/s | baseline examples/s | speedup | compile s | GFLOP/s | of peak |\n'
    '|---|---|---|---|---|---|---|'
  )
  (workdir / 'throughput.md').write_text('\n'.join([header, *rows]) + '\n')
  figure = Figure(figsize=(7, 7), dpi=100)
  axes, share = figure.subplots(2, 1, sharex=True)
  sizes = [r['batch_size'] for r in results]
  axes.plot(sizes, [r['examples_per_sec'] for r in results], 'o-', label=results[0]['placement'])
  axes.plot(sizes, [r['baseline_examples_per_sec'] for r in results], 's--', label='baseline')
  axes.set(xscale='log', ylabel='training examples/s')
  axes.set_title(
    f'{results[0]["device_count"]} x {results[0]["device_kind"]}, JAX '
    f'{results[0]["jax_version"]}, {results[0]["model"]} on {results[0]["dataset"]}'
  )
  axes.legend()
  share.plot(sizes, [100 * r['utilization'] for r in results], 'o-')
  share.set(xlabel='batch size', ylabel='% of peak FLOP/s')
  share.set_ylim(bottom=0)
  for panel in (axes, share):
    panel.grid(alpha=0.3)
  figure.tight_layout()
  figure.savefig(workdir / 'throughput.png')
  logging.info('Throughput curve written to %s.', workdir / 'throughput.png')


def compare(
  config: ml_collections.ConfigDict, split: input_pipeline.Split, info: input_pipeline.DatasetInfo
) -> dict:
  """Examples/s of config (A) and of config with the overrides in benchmark.compare (B).

  Both are set up side by side and their epochs alternated, benchmark.repeats rounds.
  """
  other = ab.apply_overrides(config, config.benchmark.compare)
  configuration.validate(other)
  devices.check_batch_size(other.optim.batch_size)
  timers = [epoch_timer(c, split, info)[0] for c in (config, other)]
  seconds = ab.alternate(*timers, rounds=config.benchmark.repeats)
  a, b = ([len(split) / s for s in side] for side in seconds)
  summary = ab.summarize(a, b, higher_is_better=True)
  logging.info(
    'A/B, %d rounds of one epoch each, alternated:\n%s',
    config.benchmark.repeats,
    ab.table(summary, 'examples/s', 'the config', config.benchmark.compare),
  )
  return {
    'compare': config.benchmark.compare,
    'rounds': config.benchmark.repeats,
    'metric': 'examples_per_sec',
    'a_values': a,
    'b_values': b,
    **summary,
    **provenance.machine_facts(),
  }


def run(config: ml_collections.ConfigDict, workdir: Path | None = None) -> list[dict]:
  """Per batch size, a table on stderr and one JSON line on stdout; a curve for several.

  benchmark.batch_sizes, if set, lists the batch sizes; else optim.batch_size alone. With
  benchmark.compare, an A/B comparison instead (compare); with benchmark.target_accuracy, the
  time to that validation accuracy (mlp/tools/to_target.py).
  """
  configuration.validate(config)
  configuration.check(config, fields.paths('benchmark'))
  if config.benchmark.target_accuracy:
    result = to_target.measure(config)
    print(json.dumps(result), file=sys.stdout, flush=True)
    return [result]
  sizes = tuple(config.benchmark.batch_sizes) or (config.optim.batch_size,)
  for batch_size in sizes:
    if not isinstance(batch_size, int) or batch_size < 1:
      raise UserError(
        f'benchmark.batch_sizes={",".join(map(str, sizes))}: {batch_size!r} is not a batch size; '
        'list positive integers, such as 50,100,200.'
      )
    devices.check_batch_size(batch_size)
    limits.check_batch('benchmark.batch_sizes', batch_size, config)
  if len(sizes) == 1:
    return _measure_all(config, sizes, None)
  workdir = Path(workdir or Path('runs') / f'benchmark-{time.strftime("%Y%m%d-%H%M%S")}')
  lock.prepare(workdir)  # Before the measuring: a --workdir naming a file fails in seconds.
  with lock.locked(workdir):  # Two benchmarks in one workdir: the second is refused.
    return _measure_all(config, sizes, workdir)


def _measure_all(config, sizes: tuple[int, ...], workdir: Path | None) -> list[dict]:
  """Measures each batch size; writes the curve to workdir for several."""
  split, _ = input_pipeline.load_train_split(config)
  info = input_pipeline.DatasetInfo.of(config.data.name, split)
  if config.benchmark.compare:
    result = compare(config, split, info)
    print(json.dumps(result), file=sys.stdout, flush=True)
    return [result]
  peak = flops.peak(config.run.compute_dtype)
  if config.benchmark.profile:
    jax.profiler.start_trace(config.benchmark.profile)
  results = []
  try:
    for batch_size in sizes:
      sized = config.copy_and_resolve_references()
      sized.optim.batch_size = batch_size
      results.append(measure(sized, split, info, peak))
      _log_table(results[-1])
      print(json.dumps(results[-1]), file=sys.stdout, flush=True)
  finally:
    if config.benchmark.profile:
      jax.profiler.stop_trace()
      logging.info(
        'Profile written to %s (open with TensorBoard or Perfetto).', config.benchmark.profile
      )
  if workdir is not None:
    save_curve(results, workdir)
  return results
