"""The convolutional network of Flax's MNIST example, and the MNIST speed record's, by its fields.

The default is Flax's: 3x3 'SAME' convolutions, average pooling. The speed record's network
(tuomaso/train_mnist_fast: conv 5x5 (24), max-pool, conv 3x3 (32), max-pool, Dense 256) is
kernel_sizes 5,3, padding 'VALID' and pool 'max' (configs/speedrun.py).
"""

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from input_pipeline.errors import UserError
from mlp.core.fields import Role, choice, positive, widths


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pool, stride 2, odd edges dropped (as 'VALID' pooling does), by reshape and max.

  Not lax.reduce_window: on XLA:CPU its gradient made the record network's step 82 ms against
  55 ms this way (docs/speedrun.md).
  """
  batch, height, width, channels = x.shape
  x = x[:, : height // 2 * 2, : width // 2 * 2]
  return x.reshape(batch, height // 2, 2, width // 2, 2, channels).max(axis=(2, 4))


def _avg_pool_2x2(x: jax.Array) -> jax.Array:
  return nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2))


POOLS = {'avg': _avg_pool_2x2, 'max': max_pool_2x2}


class CNN(nnx.Module):
  """Stages of conv, ReLU, 2x2 pool; then Dense, ReLU, Dense."""

  FIELDS = {
    'conv_features': widths((32, 64), Role.RESULT, 'Channels of each conv + 2x2 pool stage.'),
    # Runs saved before these three fields had their defaults.
    'kernel_sizes': widths(
      (3,), Role.RESULT, "Each stage's square kernel; the last repeats.", same_as_before=True
    ),
    'padding': choice(
      'SAME', ('SAME', 'VALID'), Role.RESULT, "The convolutions' padding.", same_as_before=True
    ),
    'pool': choice('avg', tuple(POOLS), Role.RESULT, 'The 2x2 pooling.', same_as_before=True),
    'dense_size': positive(256, Role.RESULT, 'Width of the Dense layer after the convolutions.'),
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
    channels = [image_shape[-1], *fields.conv_features]
    kernels = [
      fields.kernel_sizes[min(i, len(fields.kernel_sizes) - 1)] for i in range(len(channels) - 1)
    ]
    self.convs = nnx.List(
      nnx.Conv(n_in, n_out, (k, k), padding=fields.padding, dtype=dtype, rngs=rngs)
      for n_in, n_out, k in zip(channels[:-1], channels[1:], kernels, strict=True)
    )
    self.pool = fields.pool
    height, width = image_shape[0], image_shape[1]
    for k in kernels:
      shrink = k - 1 if fields.padding == 'VALID' else 0
      height, width = (height - shrink) // 2, (width - shrink) // 2
    if min(height, width) < 1:
      raise UserError(
        f'cnn.kernel_sizes {tuple(fields.kernel_sizes)} with {fields.padding} padding leave no '
        f'pixels of a {image_shape[0]}x{image_shape[1]} image after '
        f'{len(kernels)} stages: use fewer stages or smaller kernels.'
      )
    flat = height * width * channels[-1]
    self.hidden = nnx.Linear(flat, fields.dense_size, dtype=dtype, rngs=rngs)
    self.out = nnx.Linear(fields.dense_size, num_classes, dtype=dtype, rngs=rngs)

  def __call__(
    self, images: jax.Array, *, train: bool = False, key: jax.Array | None = None
  ) -> jax.Array:
    """Logits (batch, classes) for float images (batch, H, W, C); no dropout, no train mode."""
    x = images
    for conv in self.convs:
      x = POOLS[self.pool](jax.nn.relu(conv(x)))
    x = jax.nn.relu(self.hidden(x.reshape(x.shape[0], -1)))
    return self.out(x)
