"""The optimizer a config asks for.

Hyperparameters are injected into the optimizer state (optax.inject_hyperparams), so they are
arrays: a sweep can vmap over them and a checkpoint records them.
"""

import ml_collections
import optax


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  return optax.inject_hyperparams(optax.adam)(learning_rate=config.learning_rate)
