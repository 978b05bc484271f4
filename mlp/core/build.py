"""Building the model and its train state from a config: the one place both are made."""

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from input_pipeline import DatasetInfo
from mlp.core import augment, models, outliers, steps
from mlp.core.fields import Role
from mlp.core.optimizer import make_optimizer


def network(config: ml_collections.ConfigDict, info: DatasetInfo, key: jax.Array) -> nnx.Module:
  """The registered model config.model, built from its config group for the dataset's shapes."""
  return models.REGISTRY[config.model](
    config[config.model],
    info.image_shape,
    info.num_classes,
    dtype=jnp.dtype(config.run.compute_dtype),
    rngs=nnx.Rngs(params=key),
  )


def build_model(
  config: ml_collections.ConfigDict, info: DatasetInfo, steps_per_epoch: int | None = None
) -> tuple[steps.Model, steps.Variables]:
  """The model (structure, optimizer, rates) and its freshly initialised variables.

  steps_per_epoch sets the length of a learning-rate schedule; None is for restoring and
  inference, where only the structure of the train state matters.
  """
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: network(config, info, jax.random.key(0))))

  # One compiled program: eagerly, each layer's init compiles on its own (0.9 s of a cold start).
  @jax.jit
  def init(seed):
    _, params, model_state = nnx.split(network(config, info, jax.random.key(seed)), nnx.Param, ...)
    return params, model_state

  optimizer, learning_rate = make_optimizer(config.optim, steps_per_epoch)
  fields = models.REGISTRY[config.model].FIELDS
  model = steps.Model(
    graphdef,
    optimizer,
    learning_rate,
    network_rates={
      name: config[config.model][name]
      for name, field in fields.items()
      if field.role is Role.TRACED
    },
    label_smoothing=config.optim.label_smoothing,
    augment=augment.from_config(config.augment),
    outliers=outliers.from_config(config.outliers, info.image_shape),
  )
  return model, init(config.seed)


def init_state(
  config: ml_collections.ConfigDict, model: steps.Model, variables: steps.Variables
) -> steps.TrainState:
  """Step 0: the given variables, a fresh optimizer state and the dropout key from the seed."""

  @jax.jit  # One compiled program rather than one per eager operation.
  def fresh(variables, seed):
    params, model_state = variables
    return steps.TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=model.optimizer.init(params),
      rng=jax.random.fold_in(jax.random.key(seed), 1),
      model_state=model_state,
    )

  return fresh(variables, config.seed)
