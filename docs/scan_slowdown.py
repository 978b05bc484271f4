"""XLA:CPU runs a convolutional training step ~10x slower inside a while loop than outside one.

Self-contained (jax, optax): the Flax MNIST example's CNN (conv 32, avg-pool, conv 64, avg-pool,
dense 256, dense 10), Adam, batch 128, written with plain lax ops. Each way runs the same step
on the same batch; only how it is wrapped differs:

  direct      jit(step)                                   no loop
  scan_1      jit(lax.scan(step, length=1))               a while loop of one iteration
  scan_4      jit(lax.scan(step, length=4))               a while loop of four
  unrolled_4  jit(lax.scan(step, length=4, unroll=True))  four copies of the step, no loop
  forward_*   the forward pass alone; gradient_*: forward and backward; adam_*: Adam alone

  python docs/scan_slowdown.py   # prints ms per step for each way, rounds alternating
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

BATCH, ROUNDS = 128, 5


def init(key):
  k = jax.random.split(key, 4)
  return {
    'c1': jax.random.normal(k[0], (3, 3, 1, 32)) * 0.1,
    'c2': jax.random.normal(k[1], (3, 3, 32, 64)) * 0.05,
    'd1': jax.random.normal(k[2], (7 * 7 * 64, 256)) * 0.01,
    'd2': jax.random.normal(k[3], (256, 10)) * 0.05,
  }


def forward(params, images):
  x = images
  for name in ('c1', 'c2'):
    dims = ('NHWC', 'HWIO', 'NHWC')
    x = jax.lax.conv_general_dilated(x, params[name], (1, 1), 'SAME', dimension_numbers=dims)
    n, h, w, c = x.shape
    x = jax.nn.relu(x).reshape(n, h // 2, 2, w // 2, 2, c).mean((2, 4))
  return jax.nn.relu(x.reshape(x.shape[0], -1) @ params['d1']) @ params['d2']


optimizer = optax.adam(1e-3)


def step(carry, batch):
  params, opt_state = carry
  images, labels = batch

  def loss(p):
    return optax.softmax_cross_entropy_with_integer_labels(forward(p, images), labels).mean()

  grads = jax.grad(loss)(params)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return (optax.apply_updates(params, updates), opt_state), None


def forward_step(carry, batch):
  return carry + forward(carry_params, batch[0]).sum(), None


def gradient_step(carry, batch):
  """The gradient alone: forward, backward, no optimizer."""
  images, labels = batch

  def loss(p):
    return optax.softmax_cross_entropy_with_integer_labels(forward(p, images), labels).mean()

  grads = jax.grad(loss)(carry_params)
  return carry + sum(g.sum() for g in jax.tree.leaves(grads)), None


def adam_step(carry, batch):
  """Adam alone, on fixed gradients (the parameters' shapes)."""
  params, opt_state = carry
  updates, opt_state = optimizer.update(carry_params, opt_state, params)
  return (optax.apply_updates(params, updates), opt_state), None


def scanned(body, length, unroll=1):
  return jax.jit(
    lambda c, xs: jax.lax.scan(body, c, jax.tree.map(lambda x: x[:length], xs), unroll=unroll)[0]
  )


def direct(body):
  return jax.jit(lambda c, xs: body(c, jax.tree.map(lambda x: x[0], xs))[0])


rng = np.random.default_rng(0)
batches = (
  jnp.asarray(rng.random((4, BATCH, 28, 28, 1), np.float32)),
  jnp.asarray(rng.integers(0, 10, (4, BATCH)), jnp.int32),
)
carry_params = init(jax.random.key(0))
train_carry = (carry_params, optimizer.init(carry_params))
ways = {
  'direct': (direct(step), train_carry, 1),
  'scan_1': (scanned(step, 1), train_carry, 1),
  'scan_4': (scanned(step, 4), train_carry, 4),
  'unrolled_4': (scanned(step, 4, unroll=True), train_carry, 4),
  'forward_direct': (direct(forward_step), jnp.float32(0), 1),
  'forward_scan_1': (scanned(forward_step, 1), jnp.float32(0), 1),
  'gradient_direct': (direct(gradient_step), jnp.float32(0), 1),
  'gradient_scan_1': (scanned(gradient_step, 1), jnp.float32(0), 1),
  'adam_direct': (direct(adam_step), train_carry, 1),
  'adam_scan_1': (scanned(adam_step, 1), train_carry, 1),
}
for function, carry, _ in ways.values():
  jax.block_until_ready(function(carry, batches))  # Compile outside the timing.
times = {name: [] for name in ways}
for round_ in range(ROUNDS):
  for name in ways if round_ % 2 == 0 else reversed(ways):
    function, carry, steps = ways[name]
    start = time.perf_counter()
    jax.block_until_ready(function(carry, batches))
    times[name].append((time.perf_counter() - start) / steps)
print(f'jax {jax.__version__}, {jax.default_backend()}, {jax.devices()[0].device_kind}')
for name, seconds in times.items():
  median, best = statistics.median(seconds) * 1e3, min(seconds) * 1e3
  print(f'{name:15s} {median:8.1f} ms per step (best {best:.1f})')
