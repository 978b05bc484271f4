"""Every metric a run reports, declared once with how it aggregates.

A per-example metric is summed over unmasked examples and divided by their count, so its mean
is exact across steps, calls and devices; a last-batch metric is measured once per record, on
its last step's batch. Everything else follows from the two tables: a metric is one line.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

Sums = dict[str, jax.Array]
COUNT = 'count'  # The sum of the mask: the examples every per-example sum is over.


@dataclasses.dataclass(frozen=True)
class PerExample:
  """A metric averaged over examples: value(logits, labels) -> (batch,) float32."""

  name: str
  value: Callable[[jax.Array, jax.Array], jax.Array]


def _top_k_accuracy(k: int) -> Callable[[jax.Array, jax.Array], jax.Array]:
  def value(logits: jax.Array, labels: jax.Array) -> jax.Array:
    label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
    # Ties count against the label, so that constant logits score 0, not 1.
    return (jnp.sum(logits >= label_logit, axis=-1) <= k).astype(jnp.float32)

  return value


PER_EXAMPLE = (
  # The plain cross-entropy, comparable across configs (label smoothing changes only the
  # objective the step minimises).
  PerExample('loss', optax.softmax_cross_entropy_with_integer_labels),
  PerExample('accuracy', _top_k_accuracy(1)),
  PerExample('top2_accuracy', _top_k_accuracy(2)),
)


@dataclasses.dataclass(frozen=True)
class LastBatch:
  """A metric of the state after a record's last step: value(grads, state, model) -> scalar.

  grads are the last batch's gradients without dropout or distortions.
  """

  name: str
  value: Callable


LAST_BATCH = (
  LastBatch('grad_norm', lambda grads, state, model: optax.tree.norm(grads)),
  LastBatch('param_norm', lambda grads, state, model: optax.tree.norm(state.params)),
  # The rate the last update used, schedule included.
  LastBatch(
    'learning_rate', lambda grads, state, model: model.learning_rate(state.opt_state, state.step)
  ),
)


def example_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> Sums:
  """Each per-example metric summed over the unmasked examples, and their count."""
  mask = mask.astype(jnp.float32)
  sums = {m.name: jnp.sum(m.value(logits, labels) * mask) for m in PER_EXAMPLE}
  return sums | {COUNT: jnp.sum(mask)}


def zero_sums() -> Sums:
  return {name: jnp.zeros((), jnp.float32) for name in (*(m.name for m in PER_EXAMPLE), COUNT)}


def add(a: Sums, b: Sums) -> Sums:
  return jax.tree.map(jnp.add, a, b)


def summarize(sums: Sums, prefix: str = '', last_batch: Sums | None = None) -> dict[str, float]:
  """Per-example means (and the last-batch values), as floats on the host, names prefixed."""
  host = jax.device_get(sums)
  end = jax.device_get(last_batch or {})
  count = host[COUNT].astype('float64')
  means = {f'{prefix}{m.name}': float(host[m.name] / count) for m in PER_EXAMPLE}
  return means | {m.name: float(end[m.name]) for m in LAST_BATCH if m.name in end}


def diverged(train_loss: float, num_classes: int) -> bool:
  """Whether a mean training loss says the run has diverged.

  Guessing uniformly scores ln(classes), about where an untrained network starts; ten times
  that is confidently wrong on most examples, which only a run whose updates blew up reaches.
  """
  return bool(not np.isfinite(train_loss) or train_loss > 10 * np.log(num_classes))
