"""Sizes that pass validation but cannot fit: refused in a line before anything is allocated.

Without this, optim.batch_size=10**9 asks XLA for terabytes (a crash deep inside it) and
mlp.hidden_sizes=10**8,10**8 spends minutes initialising before failing. The estimate is a
lower bound (inputs, activations and Adam's state in float32), so a config it refuses can
never have worked; one it passes may still run out, which main.py also reports in a line.
"""

import math
import os

import ml_collections

from input_pipeline.errors import UserError

FLOAT_BYTES = 4
# Values per example of the datasets this project names; others count as MNIST-sized.
INPUT_VALUES = {'cifar10': 32 * 32 * 3, 'cifar100': 32 * 32 * 3}
MNIST_VALUES = 28 * 28
# Parameters, gradients and Adam's two moments.
PARAMETER_COPIES = 4


def memory_bytes() -> int:
  """The memory the arrays must share: the first device's limit if it reports one, else RAM."""
  import jax

  stats = jax.local_devices()[0].memory_stats() or {}
  if stats.get('bytes_limit'):
    return int(stats['bytes_limit'])
  return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')


def _input_values(config: ml_collections.ConfigDict) -> int:
  return INPUT_VALUES.get(config.data.name.partition(':')[0], MNIST_VALUES)


def _mlp_parameters(config: ml_collections.ConfigDict) -> int:
  if config.model != 'mlp':
    return 0
  widths = [_input_values(config), *config.mlp.hidden_sizes, 10]
  return sum(a * b + b for a, b in zip(widths, widths[1:], strict=False))


def _size(num_bytes: float) -> str:
  units = ('B', 'KB', 'MB', 'GB', 'TB', 'PB', 'EB')
  power = min(int(math.log(max(num_bytes, 1), 1000)), len(units) - 1)
  return f'{num_bytes / 1000**power:.3g} {units[power]}'


def check_batch(name: str, batch_size: int, config: ml_collections.ConfigDict) -> None:
  """Refuses a batch whose images and activations alone exceed memory, with a size that fits."""
  widest = max([_input_values(config), *(config.mlp.hidden_sizes if config.model == 'mlp' else ())])
  per_example = (_input_values(config) + widest) * FLOAT_BYTES
  available = memory_bytes()
  if batch_size * per_example > available:
    fits = max(1, available // per_example // 2)
    raise UserError(
      f'{name}={batch_size} needs at least {_size(batch_size * per_example)} for one batch, '
      f'more than the {_size(available)} of memory here; use at most about {fits}.'
    )


def check(config: ml_collections.ConfigDict) -> None:
  """Refuses batch and model sizes that cannot fit in this machine's memory."""
  available = memory_bytes()
  parameters = _mlp_parameters(config)
  if parameters * PARAMETER_COPIES * FLOAT_BYTES > available:
    raise UserError(
      f'mlp.hidden_sizes={tuple(config.mlp.hidden_sizes)} makes {parameters:.3g} parameters, '
      f"{_size(parameters * PARAMETER_COPIES * FLOAT_BYTES)} with Adam's state, more than the "
      f'{_size(available)} of memory here; use smaller layers.'
    )
  check_batch('optim.batch_size', config.optim.batch_size, config)
  check_batch('run.eval_batch_size', config.run.eval_batch_size, config)
