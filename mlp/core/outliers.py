"""Outlier Exposure: teaching a classifier to be unsure of ink that is no digit.

Hendrycks et al. (2019) add to the objective the cross-entropy from the uniform distribution to
the model's prediction on outliers; here the outliers are generated on the device, inside the
jitted step (input_pipeline/negatives.py). The uniform target, rather than an extra background
class, keeps the model's classes the dataset's (export, eval, the confusion matrix and every
saved run stay as they are), and the refusal score stays the maximum softmax probability that
the reader already thresholds; only the threshold moves, chosen on validation digits.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from input_pipeline import negatives as drawn
from input_pipeline.errors import UserError
from mlp.core.fields import Field, Role, at_least, fraction


def uniform_cross_entropy(logits: jax.Array) -> jax.Array:
  """Per example, the cross-entropy from the uniform distribution to softmax(logits)."""
  return -jnp.mean(jax.nn.log_softmax(logits), axis=-1)


@dataclasses.dataclass(frozen=True)
class Exposure:
  """A config's outlier group: how many negatives a step draws, of which families, and how
  much their loss weighs against the digits'."""

  weight: float
  per_batch: int
  families: tuple[str, ...]

  def negatives(self, key: jax.Array, images: jax.Array, labels: jax.Array) -> jax.Array:
    return drawn.negatives(key, images, labels, self.per_batch, self.families)

  def loss(self, logits: jax.Array) -> jax.Array:
    return self.weight * jnp.mean(uniform_cross_entropy(logits))


def from_config(outliers, image_shape: tuple[int, ...]) -> Exposure | None:
  """The Exposure a config's outliers group asks for; None when its weight is 0 (off).

  Raises UserError for images other than 28x28 grey ones, the only ones it draws.
  """
  if not outliers.weight:
    return None
  if tuple(image_shape) != (drawn.SIDE, drawn.SIDE, 1):
    raise UserError(
      f'Invalid config: outliers.weight={outliers.weight}: generated non-digits are 28x28x1, '
      f'the images are {tuple(image_shape)}; set outliers.weight=0.'
    )
  return Exposure(float(outliers.weight), int(outliers.per_batch), tuple(outliers.families))


def threshold(probabilities: np.ndarray, keep: float) -> float:
  """The maximum softmax probability below which an input is refused: the one that keeps the
  share `keep` of the given (validation) digits, by their probabilities (n, classes)."""
  return float(np.quantile(np.asarray(probabilities).max(axis=1), 1 - keep))


def refusal(probabilities, count: int, keep: float) -> dict:
  """What REFUSAL_FILE holds: the threshold keeping `keep` of the validation digits, from their
  probabilities (padded batches of them: the first `count` rows are the digits)."""
  rows = np.asarray(probabilities).reshape(-1, np.shape(probabilities)[-1])[:count]
  return {'min_confidence': threshold(rows, keep), 'keep': keep}


def _families(value) -> bool:
  return (
    isinstance(value, tuple | list) and len(value) >= 1 and all(v in drawn.FAMILIES for v in value)
  )


# Runs saved before this group existed trained without outliers: its defaults fill in.
FIELDS = {
  'weight': at_least(
    0.0,
    0.0,
    Role.RESULT,
    'Weight of the loss on generated non-digits; 0: off.',
    same_as_before=True,
  ),
  'per_batch': at_least(
    1, 32, Role.RESULT, 'Generated non-digits added to each batch.', same_as_before=True
  ),
  'families': Field(
    drawn.FAMILIES,
    Role.RESULT,
    'The kinds of non-digits trained on.',
    _families,
    f'one or more of {", ".join(drawn.FAMILIES)}',
    same_as_before=True,
  ),
  'keep': fraction(
    0.995, Role.EXECUTION, 'Share of validation digits the refusal threshold keeps.', False
  ),
}
# What predict and serve read: the threshold chosen on validation data at the end of training.
REFUSAL_FILE = 'refusal.json'
