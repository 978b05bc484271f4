"""Pure, jittable functions of the train state: the loss, one step, many steps, evaluation.

No I/O and no Python state: every function maps arrays to arrays, so it is jitted once and can
run many steps on the device under lax.scan. Metric sums (mlp/core/metrics.py) add up exactly
across steps, batches and devices.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from mlp.core import metrics, optimizer

SCAN_UNROLL = 2  # Steps per loop iteration: 7% more examples/s than 1 here (batch 100); 4: less.
# What inference needs: parameters and other state (BatchNorm's statistics; empty if none).
Variables = tuple[nnx.State, nnx.State]


class TrainState(struct.PyTreeNode):
  """Everything that changes during training; the model's structure and optimizer are static."""

  step: jax.Array  # Batches trained so far (optim.accumulate_steps of them per update).
  params: nnx.State
  opt_state: optax.OptState
  rng: jax.Array  # Key for dropout and distortions; each step folds in its step number.
  # The network's non-parameter state, updated by the forward pass in training (BatchNorm's
  # running statistics); empty for stateless networks.
  model_state: nnx.State

  @property
  def variables(self) -> Variables:
    """What evaluation and inference use: the average of the weights where one is kept."""
    return optimizer.averaged(self.opt_state, self.params), self.model_state


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
  # Generated non-digits and their loss (outliers.Exposure); None: off.
  outliers: Any = struct.field(pytree_node=False, default=None)


def _off(rate) -> bool:
  return isinstance(rate, int | float) and rate == 0


def forward(
  model: Model, variables: Variables, images, *, train: bool = False, key=None
) -> tuple[jax.Array, nnx.State]:
  """Float32 logits for images (uint8, or float from the distortions) in [0, 255], and the
  network's state after the pass (BatchNorm's statistics move only when train is True)."""
  network = nnx.merge(model.graphdef, *variables, copy=True)
  rates = model.network_rates if key is not None else {}
  outputs = network(images.astype(jnp.float32) / 255.0, train=train, key=key, **rates)
  return outputs.astype(jnp.float32), nnx.state(network, nnx.Not(nnx.Param))


def loss_and_sums(params, model: Model, model_state, images, labels, mask, key=None):
  """The mean training objective over the unmasked examples; its metric sums and new state.

  The objective smooths the labels if asked; the sums hold the metrics of mlp/core/metrics.py.
  Images past the labels' count are generated non-digits, whose outlier loss is added.
  """
  outputs, model_state = forward(model, (params, model_state), images, train=True, key=key)
  outputs, negatives = outputs[: labels.shape[0]], outputs[labels.shape[0] :]
  sums = metrics.example_sums(outputs, labels, mask)
  if _off(model.label_smoothing):
    objective = optax.softmax_cross_entropy_with_integer_labels(outputs, labels)
  else:
    targets = optax.smooth_labels(jax.nn.one_hot(labels, outputs.shape[-1]), model.label_smoothing)
    objective = optax.softmax_cross_entropy(outputs, targets)
  mean = jnp.sum(objective * mask) / jnp.maximum(sums[metrics.COUNT], 1.0)
  if negatives.shape[0]:
    mean = mean + model.outliers.loss(negatives)
  return mean, (sums, model_state)


def train_step(
  model: Model, state: TrainState, images, labels, mask
) -> tuple[TrainState, metrics.Sums]:
  """One optimizer step on one batch; padded examples (mask 0) carry no gradient."""
  step_key = jax.random.fold_in(state.rng, state.step)
  if model.outliers is not None:
    step_key, outlier_key = jax.random.split(step_key)
    negatives = model.outliers.negatives(outlier_key, images, labels)
    images = jnp.concatenate([images.astype(jnp.float32), negatives])
  if model.augment is not None:
    step_key, augment_key = jax.random.split(step_key)
    images = model.augment(images, augment_key)
  rates_off = all(_off(rate) for rate in model.network_rates.values())
  grads, (sums, model_state) = jax.grad(loss_and_sums, has_aux=True)(
    state.params, model, state.model_state, images, labels, mask, None if rates_off else step_key
  )
  updates, opt_state = model.optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  state = state.replace(
    step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state
  )
  return state, sums


def last_batch_metrics(model: Model, state: TrainState, images, labels, mask) -> metrics.Sums:
  """The metrics.LAST_BATCH values of the state on the last batch it trained on."""
  grads, _ = jax.grad(loss_and_sums, has_aux=True)(
    state.params, model, state.model_state, images, labels, mask
  )
  return {m.name: m.value(grads, state, model) for m in metrics.LAST_BATCH}


def _scan_train_steps(model: Model, state, xs, batch_of):
  """One train_step per slice of xs along its leading axis; batch_of(slice) gives the batch.

  A call of one step is no loop at all: XLA:CPU runs convolutions about 11x slower inside a
  loop body, even one of a single iteration (docs/scan_slowdown.md).
  """
  if jax.tree.leaves(xs)[0].shape[0] == 1:
    return train_step(model, state, *batch_of(jax.tree.map(lambda x: x[0], xs)))

  def body(carry, x):
    state, total = carry
    state, sums = train_step(model, state, *batch_of(x))
    return (state, metrics.add(total, sums)), None

  (state, total), _ = jax.lax.scan(body, (state, metrics.zero_sums()), xs, unroll=SCAN_UNROLL)
  return state, total


def train_on_indices(model: Model, state, images, labels, indices, mask):
  """Steps over batches gathered on the device: indices and mask are (steps, batch)."""
  return _scan_train_steps(
    model, state, (indices, mask), lambda x: (images[x[0]], labels[x[0]], x[1])
  )


def train_on_batches(model: Model, state, images, labels, mask):
  """Steps over batches stacked on the host: images (steps, batch, H, W, C)."""
  return _scan_train_steps(model, state, (images, labels, mask), lambda batch: batch)


def measure_statistics(model: Model, state: TrainState, images) -> TrainState:
  """The state with BatchNorm's statistics measured on `images` (training images) with the
  weights evaluation uses. Its running averages lag weights that move every step: one epoch of
  the ResNet under Adam 1e-3 tested 97.7% with them and 98.4% with these (docs/speedrun.md)."""
  network = nnx.merge(model.graphdef, *state.variables, copy=True)
  for _, module in network.iter_modules():
    if isinstance(module, nnx.BatchNorm):
      module.momentum = 0.0  # These images' statistics alone.
  network(images.astype(jnp.float32) / 255.0, train=True)
  return state.replace(model_state=nnx.state(network, nnx.Not(nnx.Param)))


def evaluate(model: Model, variables: Variables, images, labels, mask) -> metrics.Sums:
  """Metric sums over stacked, padded batches (steps, batch, ...); padding is masked out."""

  def body(total, batch):
    images, labels, mask = batch
    outputs, _ = forward(model, variables, images)
    return metrics.add(total, metrics.example_sums(outputs, labels, mask)), None

  total, _ = jax.lax.scan(body, metrics.zero_sums(), (images, labels, mask))
  return total


def probabilities(model: Model, variables: Variables, images) -> jax.Array:
  """Softmax class probabilities (batch, classes) for uint8 images (batch, H, W, C)."""
  return jax.nn.softmax(forward(model, variables, images)[0])
