"""XLA's FLOP count of a training step against the count worked out by hand, and the peak table."""

import pytest
from conftest import MNIST_INFO

from configs import default
from mlp.tools import flops

pytestmark = pytest.mark.unit

IMAGE_SHAPE, NUM_CLASSES = MNIST_INFO.image_shape, MNIST_INFO.num_classes


@pytest.mark.parametrize(('hidden_sizes', 'batch_size'), [((50, 50), 100), ((16,), 1000)])
def test_step_flops_match_the_analytic_count(hidden_sizes, batch_size):
  """Matmuls: forward 2 FLOPs per weight and example, backward 2 for the weight gradient and 2
  for the input gradient except in the first layer (images are not differentiated), so about
  6 x parameters per example minus 2 x the first layer's weights.

  The rest is elementwise, which the analytic count bounds rather than predicts: per example
  1-2 FLOPs per pixel (to float, / 255) and a few to 20 per activation (bias, ReLU, softmax and
  their gradients); per step 10-20 per parameter (Adam's moments, bias correction, update).
  """
  config = default.get_config()
  config.mlp.hidden_sizes = hidden_sizes
  sizes = [IMAGE_SHAPE[0] * IMAGE_SHAPE[1], *hidden_sizes, NUM_CLASSES]
  weights = [n_in * n_out for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)]
  activations = sum(sizes[1:])
  parameters = sum(weights) + activations  # Each activation has one bias.
  matmuls = batch_size * (4 * sum(weights) + 2 * sum(weights[1:]))
  low = matmuls + batch_size * sizes[0] + 10 * parameters
  high = matmuls + batch_size * (2 * sizes[0] + 20 * activations) + 20 * parameters

  counted = flops.step_cost(config, MNIST_INFO, batch_size)

  assert low <= counted['flops'] <= high
  assert counted['flops'] < 6 * parameters * batch_size + 20 * parameters
  assert counted['bytes_accessed'] >= 4 * parameters  # Every float32 weight is read.


@pytest.mark.parametrize(
  ('device_kind', 'expected'),
  [
    ('TPU v4', 275e12),
    ('TPU v5 lite', 197e12),
    ('TPU v5', 459e12),
    ('TPU v6 lite', 918e12),
    ('NVIDIA A100-SXM4-80GB', 312e12),
    ('NVIDIA H100 PCIe', 756e12),
    ('NVIDIA H100 80GB HBM3', 989e12),
    ('NVIDIA L4', 121e12),
    ('Tesla T4', 8.1e12),
    ('NVIDIA L40S', None),  # Not an L4.
    ('cpu', None),
  ],
)
def test_peak_table_matches_whole_device_names(device_kind, expected):
  found = flops.table_peak(device_kind, 'bfloat16')
  assert (found and found[0]) == expected


def test_the_cpu_peak_is_measured_and_plausible():
  peak, source = flops.peak('float32')
  assert 'measured' in source
  assert 1e8 < peak < 1e14  # From a slow shared core to a large server, in FLOP/s.
