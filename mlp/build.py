"""Building the model and its train state from a config: the one place both are made."""

import jax
import ml_collections
import numpy as np
from flax import nnx

from mlp import augment, steps
from mlp.model import MLP
from mlp.optimizer import make_optimizer


def build_model(
  config: ml_collections.ConfigDict, steps_per_epoch: int | None = None
) -> tuple[steps.Model, nnx.State]:
  """The model (structure, optimizer, rates) and freshly initialised parameters.

  steps_per_epoch sets the length of a learning-rate schedule; None is for restoring and
  inference, where only the structure of the train state matters.
  """
  network = MLP(
    config.hidden_sizes,
    config.activation,
    compute_dtype=config.compute_dtype,
    rngs=nnx.Rngs(params=jax.random.key(config.seed)),
  )
  graphdef, params = nnx.split(network, nnx.Param)
  optimizer = make_optimizer(config, steps_per_epoch)
  model = steps.Model(
    graphdef,
    optimizer,
    dropout_rate=config.dropout_rate,
    label_smoothing=config.label_smoothing,
    augment=augment.from_config(config),
  )
  return model, params


def init_state(config: ml_collections.ConfigDict, model: steps.Model, params) -> steps.TrainState:
  """Step 0: the given parameters, a fresh optimizer state and the dropout key from the seed."""
  return steps.TrainState(
    step=np.zeros((), np.int32),
    params=params,
    opt_state=model.optimizer.init(params),
    rng=jax.random.fold_in(jax.random.key(config.seed), 1),
  )
