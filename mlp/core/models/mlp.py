"""The notebook's multilayer perceptron: Dense layers with an activation and optional dropout."""

import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from mlp.core.fields import Role, choice, fraction, widths

ACTIVATIONS = (
  'relu',
  'gelu',
  'silu',
  'tanh',
  'sigmoid',
  'elu',
  'celu',
  'selu',
  'leaky_relu',
  'softplus',
)


class MLP(nnx.Module):
  """Flattens the images and maps them to class logits (the softmax is in the loss).

  The dropout rate is a call argument rather than an attribute so that it can be a traced value:
  a sweep trains models with different rates in one vmapped program.
  """

  FIELDS = {
    'hidden_sizes': widths((50, 50), Role.RESULT, 'Widths of the hidden Dense layers.'),
    'activation': choice(
      'relu', ACTIVATIONS, Role.RESULT, 'The jax.nn function after each hidden layer.'
    ),
    'dropout_rate': fraction(
      0.0, Role.TRACED, 'Dropout after each hidden layer (the notebook had none).'
    ),
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
    sizes = [math.prod(image_shape), *fields.hidden_sizes, num_classes]
    self.layers = nnx.List(
      nnx.Linear(n_in, n_out, dtype=dtype, rngs=rngs)
      for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)
    )
    self.activation = getattr(jax.nn, fields.activation)

  def __call__(
    self,
    images: jax.Array,
    *,
    train: bool = False,
    key: jax.Array | None = None,
    dropout_rate: float | jax.Array = 0.0,
  ) -> jax.Array:
    """Logits (batch, classes) for float images (batch, H, W, C); key None: no dropout.

    train is part of the models' interface; this network behaves the same in both modes.
    """
    x = images.reshape(images.shape[0], -1)
    for i, layer in enumerate(self.layers[:-1]):
      x = self.activation(layer(x))
      if key is not None:
        keep = jax.random.bernoulli(jax.random.fold_in(key, i), 1.0 - dropout_rate, x.shape)
        x = jnp.where(keep, x / (1.0 - dropout_rate), 0.0).astype(x.dtype)
    return self.layers[-1](x)
