"""A small residual network with BatchNorm, in the style of Flax's ImageNet ResNet, for 28x28.

A 3x3 stem, then stages of basic blocks (two 3x3 convolutions with BatchNorm, and a projection
where the shape changes); each stage after the first halves the resolution. Global average
pooling and a Dense layer give the logits. BatchNorm's running statistics are the model's state:
the train state carries them (TrainState.model_state), training updates them from each global
batch (averaged over data-parallel devices, as the batch is), and evaluation uses them.
"""

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from mlp.core.fields import Role, positive, widths

# The running statistics' decay. Under a constant learning rate they lag the weights: one epoch
# under Adam 1e-3 tested 93.3% at 0.99, 97.8% at 0.9 and 98.3% at 0.7, against 98.2% with each
# test batch's own statistics (docs/speedrun.md). Evaluation uses statistics measured anew
# (steps.measure_statistics); these serve between evaluations.
MOMENTUM = 0.7


class Block(nnx.Module):
  """conv 3x3, BN, ReLU, conv 3x3, BN, plus the input (projected by a 1x1 conv if needed)."""

  def __init__(self, n_in: int, n_out: int, stride: int, *, dtype, rngs: nnx.Rngs):
    conv = dict(kernel_size=(3, 3), use_bias=False, dtype=dtype, rngs=rngs)
    norm = dict(momentum=MOMENTUM, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.conv1 = nnx.Conv(n_in, n_out, strides=stride, **conv)
    self.norm1 = nnx.BatchNorm(n_out, **norm)
    self.conv2 = nnx.Conv(n_out, n_out, **conv)
    # Scale 1, not the zero of Goyal et al. (2017), whose blocks start as the identity: that
    # suits deep networks, but here it starts the network as its 1x1 projections alone, and
    # one epoch of Adam 1e-3 reached 95.9% instead of 98% (docs/speedrun.md).
    self.norm2 = nnx.BatchNorm(n_out, **norm)
    reshapes = stride != 1 or n_in != n_out
    project = dict(kernel_size=(1, 1), strides=stride, use_bias=False, dtype=dtype, rngs=rngs)
    self.project = nnx.data(nnx.Conv(n_in, n_out, **project) if reshapes else None)
    self.project_norm = nnx.data(nnx.BatchNorm(n_out, **norm) if reshapes else None)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = jax.nn.relu(self.norm1(self.conv1(x), use_running_average=not train))
    y = self.norm2(self.conv2(y), use_running_average=not train)
    if self.project is not None:
      x = self.project_norm(self.project(x), use_running_average=not train)
    return jax.nn.relu(x + y)


class ResNet(nnx.Module):
  """stem conv 3x3 + BN, basic blocks per stage (stride 2 from the second), pool, Dense."""

  FIELDS = {
    'stage_widths': widths((16, 32, 64), Role.RESULT, 'Channels of each stage of blocks.'),
    'blocks_per_stage': positive(1, Role.RESULT, 'Basic blocks in each stage.'),
  }

  def __init__(
    self,
    fields: ml_collections.ConfigDict,
    image_shape: tuple[int, ...],
    num_classes: int,
    *,
    dtype: jnp.dtype,
    rngs: nnx.Rngs,
  ):
    width = fields.stage_widths[0]
    self.stem = nnx.Conv(image_shape[-1], width, (3, 3), use_bias=False, dtype=dtype, rngs=rngs)
    self.stem_norm = nnx.BatchNorm(width, momentum=MOMENTUM, epsilon=1e-5, dtype=dtype, rngs=rngs)
    blocks = []
    for stage, n_out in enumerate(fields.stage_widths):
      for block in range(fields.blocks_per_stage):
        stride = 2 if stage > 0 and block == 0 else 1
        blocks.append(Block(width, n_out, stride, dtype=dtype, rngs=rngs))
        width = n_out
    self.blocks = nnx.List(blocks)
    self.out = nnx.Linear(width, num_classes, dtype=dtype, rngs=rngs)

  def __call__(
    self, images: jax.Array, *, train: bool = False, key: jax.Array | None = None
  ) -> jax.Array:
    """Logits (batch, classes) for float images (batch, H, W, C); train: batch statistics."""
    x = jax.nn.relu(self.stem_norm(self.stem(images), use_running_average=not train))
    for block in self.blocks:
      x = block(x, train)
    return self.out(jnp.mean(x, axis=(1, 2)))
