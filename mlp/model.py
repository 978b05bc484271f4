"""The multilayer perceptron: Dense layers with an activation and optional dropout.

The dropout rate is a call argument rather than a module attribute so that it can be a traced
value: a sweep trains models with different rates in one vmapped program.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)


class MLP(nnx.Module):
  """Flattens 28x28 images and maps them to 10 logits (softmax is in the loss)."""

  def __init__(
    self,
    hidden_sizes: Sequence[int],
    activation: str,
    *,
    compute_dtype: str = 'float32',
    rngs: nnx.Rngs,
  ):
    sizes = [IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2], *hidden_sizes, NUM_CLASSES]
    self.layers = nnx.List(
      nnx.Linear(n_in, n_out, dtype=jnp.dtype(compute_dtype), rngs=rngs)
      for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)
    )
    self.activation = getattr(jax.nn, activation)

  def __call__(
    self,
    images: jax.Array,
    *,
    dropout_rate: float | jax.Array = 0.0,
    dropout_key: jax.Array | None = None,
  ) -> jax.Array:
    """Logits (batch, 10) in float32 for images in [0, 1] of shape (batch, 28, 28, 1)."""
    x = images.reshape(images.shape[0], -1)
    for i, layer in enumerate(self.layers[:-1]):
      x = self.activation(layer(x))
      if dropout_key is not None:
        keep = jax.random.bernoulli(jax.random.fold_in(dropout_key, i), 1.0 - dropout_rate, x.shape)
        x = jnp.where(keep, x / (1.0 - dropout_rate), 0.0).astype(x.dtype)
    return self.layers[-1](x).astype(jnp.float32)
