"""The optimizer a config asks for: an update rule by name, clipping, a learning-rate shape,
gradient accumulation and an average of the weights.

Hyperparameters are injected into the optimizer state (optax.inject_hyperparams), so they are
arrays: a sweep can vmap over them and a checkpoint records them. A schedule is a separate
factor in [0, 1] on top of the injected peak rate (optax.scale_by_schedule), so trials with
different peak rates still share one compiled program. Each option that is off adds nothing to
the state, so runs saved before it existed restore unchanged.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

SCHEDULES = ('constant', 'cosine', 'onecycle')
OPTIMIZERS = ('adam', 'adamw', 'sgd', 'lion')


def make_optimizer(
  optim: ml_collections.ConfigDict, steps_per_epoch: int | None = None
) -> tuple[optax.GradientTransformation, Callable]:
  """The transformation for config.optim, and learning_rate(opt_state, step) -> the rate applied.

  steps_per_epoch (batches) sets the schedule's length; None is for restoring and inference,
  where only the state's structure matters.
  """
  updates_per_epoch = max((steps_per_epoch or 1) // optim.accumulate_steps, 1)
  factor = _schedule(optim, updates_per_epoch)
  optimizer = optax.chain(
    *([optax.clip_by_global_norm(optim.clip_grad_norm)] if optim.clip_grad_norm else []),
    _update_rule(optim),
    *([optax.scale_by_schedule(factor)] if factor is not None else []),
    *([average_weights(optim.ema_decay)] if optim.ema_decay else []),
  )
  if optim.accumulate_steps > 1:  # k batches of b/k: the update of one batch of b.
    optimizer = optax.MultiSteps(optimizer, optim.accumulate_steps).gradient_transformation()

  def learning_rate(opt_state, step: jax.Array) -> jax.Array:
    """The peak rate times the schedule: what the update of batch `step` used."""
    peak = optax.tree_utils.tree_get(opt_state, 'learning_rate')
    updates = jnp.maximum(step // optim.accumulate_steps - 1, 0)
    return peak * (1.0 if factor is None else factor(updates))

  return optimizer, learning_rate


def _update_rule(optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
  rate, decay = optim.learning_rate, optim.weight_decay
  betas = dict(b1=optim.beta1, b2=optim.beta2)
  if optim.optimizer == 'sgd':
    return optax.inject_hyperparams(_sgd, static_args=('momentum', 'nesterov'))(
      learning_rate=rate, weight_decay=decay, momentum=optim.momentum, nesterov=optim.nesterov
    )
  if optim.optimizer == 'lion':
    return optax.inject_hyperparams(optax.lion, static_args='mask')(
      learning_rate=rate, weight_decay=decay, mask=_kernels, **betas
    )
  if optim.optimizer == 'adamw' or decay:
    return optax.inject_hyperparams(optax.adamw, static_args='mask')(
      learning_rate=rate, weight_decay=decay, mask=_kernels, **betas
    )
  return optax.inject_hyperparams(optax.adam)(learning_rate=rate, **betas)


def _sgd(learning_rate, weight_decay, momentum: float, nesterov: bool):
  return optax.chain(
    optax.add_decayed_weights(weight_decay, _kernels),
    optax.sgd(learning_rate, momentum or None, nesterov),
  )


def _schedule(optim: ml_collections.ConfigDict, updates_per_epoch: int):
  """The schedule as a factor of the update count, peaking at 1; None: always 1."""
  warmup = round(optim.warmup_epochs * updates_per_epoch)
  total = max(round(optim.num_epochs * updates_per_epoch), 1)
  if optim.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, total)
  if optim.schedule == 'onecycle':  # PyTorch's OneCycleLR shape: from 1/25 up, then to ~0.
    return optax.cosine_onecycle_schedule(total, 1.0, max(warmup, 1) / total, 25.0, 1e4)
  if warmup:
    return optax.linear_schedule(0.0, 1.0, warmup)
  return None


def _kernels(params):
  """Decays weight matrices only; biases (1-D) keep their values, as usual for AdamW."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


class AveragedWeights(NamedTuple):
  average: optax.Params


def average_weights(decay: float) -> optax.GradientTransformation:
  """Keeps an exponential moving average of the parameters after each update (Polyak).

  It leaves the updates alone; evaluation, checkpoints, export and serving read the average
  (`averaged`). It starts at the initial weights.
  """

  def update(updates, state, params):
    new = optax.apply_updates(params, updates)
    average = jax.tree.map(lambda a, p: decay * a + (1 - decay) * p, state.average, new)
    return updates, AveragedWeights(average)

  return optax.GradientTransformation(lambda params: AveragedWeights(params), update)


def averaged(opt_state, params):
  """The average of the weights if the optimizer keeps one, else params."""
  return optax.tree_utils.tree_get(opt_state, 'average', default=params)
