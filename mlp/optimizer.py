"""The optimizer a config asks for: Adam, or AdamW with weight decay, and a learning-rate shape.

Hyperparameters are injected into the optimizer state (optax.inject_hyperparams), so they are
arrays: a sweep can vmap over them and a checkpoint records them. A schedule is a separate
factor in [0, 1] on top of the injected peak rate (optax.scale_by_schedule), so trials with
different peak rates still share one compiled program. The notebook's config (no decay, constant
rate) keeps the plain inject_hyperparams(adam) state that older checkpoints hold.
"""

import jax
import ml_collections
import optax

SCHEDULES = ('constant', 'cosine')


def make_optimizer(
  config: ml_collections.ConfigDict, steps_per_epoch: int | None = None
) -> optax.GradientTransformation:
  """Adam (weight_decay 0) or AdamW, times the schedule of config.schedule and warmup_epochs.

  steps_per_epoch sets the schedule's length in steps; None is for restoring and inference,
  where only the state's structure matters.
  """
  if config.weight_decay:
    optimizer = optax.inject_hyperparams(optax.adamw, static_args='mask')(
      learning_rate=config.learning_rate, weight_decay=config.weight_decay, mask=_kernels
    )
  else:
    optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=config.learning_rate)
  factor = learning_rate_factor(config, steps_per_epoch or 1)
  return optimizer if factor is None else optax.chain(optimizer, optax.scale_by_schedule(factor))


def learning_rate_factor(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """The schedule as a factor of the step, from 0 (warm-up start) to 1 (peak); None: always 1."""
  warmup_steps = round(config.warmup_epochs * steps_per_epoch)
  if config.schedule == 'cosine':
    total_steps = config.num_epochs * steps_per_epoch
    return optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps, max(total_steps, 1))
  if warmup_steps:
    return optax.linear_schedule(0.0, 1.0, warmup_steps)
  return None


def _kernels(params):
  """Decays weight matrices only; biases (1-D) keep their values, as usual for AdamW."""
  return jax.tree.map(lambda p: p.ndim > 1, params)
