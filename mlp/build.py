"""Building the model and its train state from a config: the one place both are made."""

import jax
import ml_collections
import numpy as np
from flax import nnx

from mlp import steps
from mlp.model import MLP
from mlp.optimizer import make_optimizer


def build_model(config: ml_collections.ConfigDict) -> tuple[steps.Model, nnx.State]:
  """The static model (structure, optimizer) and freshly initialised parameters."""
  network = MLP(
    config.hidden_sizes,
    config.activation,
    compute_dtype=config.compute_dtype,
    rngs=nnx.Rngs(params=jax.random.key(config.seed)),
  )
  graphdef, params = nnx.split(network, nnx.Param)
  return steps.Model(graphdef, make_optimizer(config), config.dropout_rate), params


def init_state(config: ml_collections.ConfigDict, model: steps.Model, params) -> steps.TrainState:
  """Step 0: the given parameters, a fresh optimizer state and the dropout key from the seed."""
  return steps.TrainState(
    step=np.zeros((), np.int32),
    params=params,
    opt_state=model.optimizer.init(params),
    rng=jax.random.fold_in(jax.random.key(config.seed), 1),
  )
