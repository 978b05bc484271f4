"""Pure, jittable functions of the train state: the loss, one step, many steps, evaluation.

No I/O and no Python state: every function maps arrays to arrays, so it is jitted once and
runs whole epochs on the device under lax.scan. Metrics are dicts of sums that add up exactly
across steps, batches and devices: `loss` and `correct` over `count` examples, and every other
entry (`call_metrics`, weighted by the steps of its call) over `steps`; `summarize` turns them
into means.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

# Two steps per loop iteration: 7% more examples/s on the 2-core CPU (290k -> 311k, batch 100);
# 4 gained less.
SCAN_UNROLL = 2
Sums = dict[str, jax.Array]


class TrainState(struct.PyTreeNode):
  """Everything that changes during training; the model's structure and optimizer are static."""

  step: jax.Array  # Optimizer steps taken so far.
  params: nnx.State
  opt_state: optax.OptState
  rng: jax.Array  # Key for dropout and distortions; each step folds in its step number.


class Model(struct.PyTreeNode):
  """How to run the network and how to update it.

  The structure and the optimizer are static. The traced rates are pytree leaves so that a
  sweep can vmap over them; a Python 0 is off when traced (no dropout masks are drawn).
  """

  graphdef: nnx.GraphDef = struct.field(pytree_node=False)
  optimizer: optax.GradientTransformation = struct.field(pytree_node=False)
  # (opt_state, step) -> the learning rate the step's update used, schedule included.
  learning_rate: Callable = struct.field(pytree_node=False)
  # The network's Role.TRACED fields, passed to its __call__ (the MLP's dropout_rate).
  network_rates: dict = struct.field(default_factory=dict)
  label_smoothing: float | jax.Array = 0.0
  # Distorts a training batch: (images, key) -> float images (augment.Distortion); None: off.
  augment: Callable | None = struct.field(pytree_node=False, default=None)


def _off(rate) -> bool:
  return isinstance(rate, int | float) and rate == 0


def logits(model: Model, params, images, key=None) -> jax.Array:
  """Float32 logits for images (uint8, or float from the distortions) in [0, 255]."""
  network = nnx.merge(model.graphdef, params)
  rates = model.network_rates if key is not None else {}
  return network(images.astype(jnp.float32) / 255.0, key=key, **rates).astype(jnp.float32)


def loss_and_sums(params, model: Model, images, labels, mask, key=None):
  """The mean training loss over the unmasked examples, and their metric sums.

  The loss smooths the labels if asked; the sums hold the plain cross-entropy, comparable
  across configs.
  """
  outputs = logits(model, params, images, key)
  mask = mask.astype(jnp.float32)
  losses = optax.softmax_cross_entropy_with_integer_labels(outputs, labels)
  objective = losses
  if not _off(model.label_smoothing):
    targets = optax.smooth_labels(jax.nn.one_hot(labels, outputs.shape[-1]), model.label_smoothing)
    objective = optax.softmax_cross_entropy(outputs, targets)
  correct = (jnp.argmax(outputs, axis=-1) == labels).astype(jnp.float32)
  count = jnp.sum(mask)
  sums = {'loss': jnp.sum(losses * mask), 'correct': jnp.sum(correct * mask), 'count': count}
  return jnp.sum(objective * mask) / jnp.maximum(count, 1.0), sums


def train_step(model: Model, state: TrainState, images, labels, mask) -> tuple[TrainState, Sums]:
  """One optimizer step on one batch; padded examples (mask 0) carry no gradient."""
  step_key = jax.random.fold_in(state.rng, state.step)
  if model.augment is not None:
    step_key, augment_key = jax.random.split(step_key)
    images = model.augment(images, augment_key)
  rates_off = all(_off(rate) for rate in model.network_rates.values())
  grads, sums = jax.grad(loss_and_sums, has_aux=True)(
    state.params, model, images, labels, mask, None if rates_off else step_key
  )
  updates, opt_state = model.optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  sums['steps'] = jnp.ones((), jnp.float32)
  return state, sums


def call_metrics(model: Model, state: TrainState, images, labels, mask) -> dict[str, jax.Array]:
  """What a call of steps ends with, on its last batch: adding a metric is one line here.

  Computed once per call inside the same program, not in every step: per-step norms cost 15% of
  the examples/s at batch 100 on the 2-core CPU.
  """
  grads, _ = jax.grad(loss_and_sums, has_aux=True)(state.params, model, images, labels, mask)
  return {
    'grad_norm': optax.tree.norm(grads),  # Without dropout or distortions.
    'param_norm': optax.tree.norm(state.params),
    'learning_rate': model.learning_rate(state.opt_state, state.step),
  }


def add_sums(a: Sums, b: Sums) -> Sums:
  return jax.tree.map(jnp.add, a, b)


def summarize(sums: Sums, prefix: str = '') -> dict[str, float]:
  """Means from sums on the host: loss and accuracy per example, the rest per step.

  Arrays with a leading trial axis (a sweep's) give a list of dicts, one per trial.
  """
  host = jax.tree.map(lambda x: jax.device_get(x).astype('float64'), sums)
  if host['count'].ndim:
    return [
      summarize({k: v[i] for k, v in host.items()}, prefix) for i in range(len(host['count']))
    ]
  means = {
    f'{prefix}loss': float(host['loss'] / host['count']),
    f'{prefix}accuracy': float(host['correct'] / host['count']),
  }
  per_step = set(host) - {'loss', 'correct', 'count', 'steps'}
  return means | {name: float(host[name] / host['steps']) for name in sorted(per_step)}


def _scan_train_steps(model: Model, state, xs, batch_of):
  """One train_step per slice of xs along its leading axis; batch_of(slice) gives the batch."""

  def body(carry, x):
    state, total = carry
    state, sums = train_step(model, state, *batch_of(x))
    return (state, add_sums(total, sums)), None

  first = jax.tree.map(lambda x: x[0], xs)
  zeros = jax.tree.map(
    jnp.zeros_like, jax.eval_shape(train_step, model, state, *batch_of(first))[1]
  )
  (state, total), _ = jax.lax.scan(body, (state, zeros), xs, unroll=SCAN_UNROLL)
  # Weighted by the call's steps, so that an epoch of several calls averages their values.
  last = batch_of(jax.tree.map(lambda x: x[-1], xs))
  for name, value in call_metrics(model, state, *last).items():
    total[name] = value * total['steps']
  return state, total


def train_on_indices(model: Model, state, images, labels, indices, mask):
  """Steps over batches gathered on the device: indices and mask are (steps, batch)."""
  return _scan_train_steps(
    model, state, (indices, mask), lambda x: (images[x[0]], labels[x[0]], x[1])
  )


def train_on_batches(model: Model, state, images, labels, mask):
  """Steps over batches stacked on the host: images (steps, batch, H, W, C)."""
  return _scan_train_steps(model, state, (images, labels, mask), lambda batch: batch)


def evaluate(model: Model, params, images, labels, mask) -> Sums:
  """Metric sums over stacked, padded batches (steps, batch, ...); padding is masked out."""

  def body(total, batch):
    _, sums = loss_and_sums(params, model, *batch)
    return add_sums(total, sums), None

  zeros = {name: jnp.zeros((), jnp.float32) for name in ('loss', 'correct', 'count')}
  total, _ = jax.lax.scan(body, zeros, (images, labels, mask))
  return total


def probabilities(model: Model, params, images) -> jax.Array:
  """Softmax class probabilities (batch, classes) for uint8 images (batch, H, W, C)."""
  return jax.nn.softmax(logits(model, params, images))
