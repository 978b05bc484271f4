"""The convolutional network of Flax's MNIST example: two conv/pool stages and two Dense layers."""

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from mlp.core.fields import Role, positive, widths


class CNN(nnx.Module):
  """conv 3x3 (32), ReLU, avg-pool 2, conv 3x3 (64), ReLU, avg-pool 2, Dense 256, ReLU, Dense."""

  FIELDS = {
    'conv_features': widths((32, 64), Role.RESULT, 'Channels of each 3x3 conv + 2x2 pool stage.'),
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
    self.convs = nnx.List(
      nnx.Conv(n_in, n_out, kernel_size=(3, 3), dtype=dtype, rngs=rngs)
      for n_in, n_out in zip(channels[:-1], channels[1:], strict=True)
    )
    height, width = image_shape[0], image_shape[1]
    for _ in self.convs:
      height, width = height // 2, width // 2
    flat = height * width * channels[-1]
    self.hidden = nnx.Linear(flat, fields.dense_size, dtype=dtype, rngs=rngs)
    self.out = nnx.Linear(fields.dense_size, num_classes, dtype=dtype, rngs=rngs)

  def __call__(
    self, images: jax.Array, *, train: bool = False, key: jax.Array | None = None
  ) -> jax.Array:
    """Logits (batch, classes) for float images (batch, H, W, C); no dropout, no train mode."""
    x = images
    for conv in self.convs:
      x = nnx.avg_pool(jax.nn.relu(conv(x)), window_shape=(2, 2), strides=(2, 2))
    x = jax.nn.relu(self.hidden(x.reshape(x.shape[0], -1)))
    return self.out(x)
