"""The optimizer a config asks for: Adam, or AdamW with weight decay, and a learning-rate shape.

Hyperparameters are injected into the optimizer state (optax.inject_hyperparams), so they are
arrays: a sweep can vmap over them and a checkpoint records them. A schedule is a separate
factor in [0, 1] on top of the injected peak rate (optax.scale_by_schedule), so trials with
different peak rates still share one compiled program.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

SCHEDULES = ('constant', 'cosine')


def make_optimizer(
  optim: ml_collections.ConfigDict, steps_per_epoch: int | None = None
) -> tuple[optax.GradientTransformation, Callable]:
  """The transformation for config.optim, and learning_rate(opt_state, step) -> the rate applied.

  steps_per_epoch sets the schedule's length in steps; None is for restoring and inference,
  where only the state's structure matters.
  """
  if optim.weight_decay:
    optimizer = optax.inject_hyperparams(optax.adamw, static_args='mask')(
      learning_rate=optim.learning_rate, weight_decay=optim.weight_decay, mask=_kernels
    )
  else:
    optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=optim.learning_rate)
  factor = _schedule(optim, steps_per_epoch or 1)
  if factor is not None:
    optimizer = optax.chain(optimizer, optax.scale_by_schedule(factor))

  def learning_rate(opt_state, step: jax.Array) -> jax.Array:
    """The peak rate times the schedule at step: what the last update of `step` used."""
    peak = optax.tree_utils.tree_get(opt_state, 'learning_rate')
    return peak * (1.0 if factor is None else factor(jnp.maximum(step - 1, 0)))

  return optimizer, learning_rate


def _schedule(optim: ml_collections.ConfigDict, steps_per_epoch: int):
  """The schedule as a factor of the step, from 0 (warm-up start) to 1 (peak); None: always 1."""
  warmup_steps = round(optim.warmup_epochs * steps_per_epoch)
  if optim.schedule == 'cosine':
    total_steps = optim.num_epochs * steps_per_epoch
    return optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps, max(total_steps, 1))
  if warmup_steps:
    return optax.linear_schedule(0.0, 1.0, warmup_steps)
  return None


def _kernels(params):
  """Decays weight matrices only; biases (1-D) keep their values, as usual for AdamW."""
  return jax.tree.map(lambda p: p.ndim > 1, params)
