"""XLA:CPU runs convolution gradients many times slower inside a while loop than outside one.

Self-contained (jax, optax). First the Flax MNIST example's CNN training step (conv 32,
avg-pool, conv 64, avg-pool, dense 256, dense 10; Adam; batch 128) on the same batch, wrapped
four ways; then each of its operations alone and inside a while loop of one iteration:

  direct      jit(step)                                   no loop
  scan_1      jit(lax.scan(step, length=1))               a while loop of one iteration
  scan_4      jit(lax.scan(step, length=4))               a while loop of four
  unrolled_4  jit(lax.scan(step, length=4, unroll=True))  four copies of the step, no loop

  python docs/scan_slowdown.py   # ms per step of each way, rounds alternating; medians
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

BATCH, ROUNDS = 128, 5
optimizer = optax.adam(1e-3)


def conv(x, w):
  return jax.lax.conv_general_dilated(
    x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )


def forward(params, images):
  x = images
  for name in ('c1', 'c2'):
    n, h, w, c = (x := jax.nn.relu(conv(x, params[name]))).shape
    x = x.reshape(n, h // 2, 2, w // 2, 2, c).mean((2, 4))
  return jax.nn.relu(x.reshape(x.shape[0], -1) @ params['d1']) @ params['d2']


def step(carry, batch):
  params, opt_state = carry
  images, labels = batch

  def loss(p):
    return optax.softmax_cross_entropy_with_integer_labels(forward(p, images), labels).mean()

  updates, opt_state = optimizer.update(jax.grad(loss)(params), opt_state, params)
  return (optax.apply_updates(params, updates), opt_state), None


def first(xs):
  return jax.tree.map(lambda x: x[0], xs)


def prefix(xs, length):
  return jax.tree.map(lambda x: x[:length], xs)


WAYS = {
  'direct': (jax.jit(lambda c, xs: step(c, first(xs))[0]), 1),
  'scan_1': (jax.jit(lambda c, xs: jax.lax.scan(step, c, prefix(xs, 1))[0]), 1),
  'scan_4': (jax.jit(lambda c, xs: jax.lax.scan(step, c, prefix(xs, 4))[0]), 4),
  'unrolled_4': (jax.jit(lambda c, xs: jax.lax.scan(step, c, prefix(xs, 4), unroll=True)[0]), 4),
}
# Operations of the step, on arrays passed in (constants would be folded at compile time).
OPERATIONS = {
  'conv forward (32->64)': lambda a: conv(a['x'], a['w']).sum(),
  'conv input gradient (32->64)': lambda a: jax.grad(lambda x: conv(x, a['w']).sum())(a['x']).sum(),
  'conv kernel gradient (32->64)': lambda a: jax.grad(lambda w: conv(a['x'], w).sum())(
    a['w']
  ).sum(),
  'conv kernel gradient (1->32)': lambda a: jax.grad(lambda w: conv(a['x1'], w).sum())(
    a['w1']
  ).sum(),
  'avg-pool gradient': lambda a: jax.grad(
    lambda x: x.reshape(BATCH, 7, 2, 7, 2, 32).mean((2, 4)).sum()
  )(a['x']).sum(),
}


def in_loop(operation):
  return jax.jit(
    lambda a: jax.lax.scan(lambda c, _: (c + operation(a), None), 0.0, None, length=1)[0]
  )


def median_ms(functions: dict, args: dict) -> dict:
  """Each function's median milliseconds per step over ROUNDS, alternating their order."""
  for function, arg in functions.values():
    jax.block_until_ready(function(*args[arg]))  # Compile outside the timing.
  times = {name: [] for name in functions}
  for round_ in range(ROUNDS):
    for name in functions if round_ % 2 == 0 else reversed(functions):
      function, arg = functions[name]
      start = time.perf_counter()
      jax.block_until_ready(function(*args[arg]))
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def main() -> None:
  rng = np.random.default_rng(0)
  k = jax.random.split(jax.random.key(0), 4)
  params = {
    'c1': jax.random.normal(k[0], (3, 3, 1, 32)) * 0.1,
    'c2': jax.random.normal(k[1], (3, 3, 32, 64)) * 0.05,
    'd1': jax.random.normal(k[2], (7 * 7 * 64, 256)) * 0.01,
    'd2': jax.random.normal(k[3], (256, 10)) * 0.05,
  }
  batches = (
    jnp.asarray(rng.random((4, BATCH, 28, 28, 1), np.float32)),
    jnp.asarray(rng.integers(0, 10, (4, BATCH)), jnp.int32),
  )
  arrays = {
    'x': jnp.asarray(rng.random((BATCH, 14, 14, 32), np.float32)),
    'w': jnp.asarray(rng.random((3, 3, 32, 64), np.float32)),
    'x1': jnp.asarray(rng.random((BATCH, 28, 28, 1), np.float32)),
    'w1': jnp.asarray(rng.random((3, 3, 1, 32), np.float32)),
  }
  print(f'jax {jax.__version__}, {jax.default_backend()}, batch {BATCH}, medians of {ROUNDS}')
  args = {'step': ((params, optimizer.init(params)), batches), 'op': (arrays,)}
  steps = median_ms({name: (function, 'step') for name, (function, _) in WAYS.items()}, args)
  for name, ms in steps.items():
    print(f'  {name:12s} {ms / WAYS[name][1]:8.1f} ms per step')
  for name, operation in OPERATIONS.items():
    both = median_ms(
      {'alone': (jax.jit(operation), 'op'), 'loop': (in_loop(operation), 'op')}, args
    )
    print(f'  {name:30s} {both["alone"]:7.1f} ms alone, {both["loop"]:7.1f} ms in a loop')


if __name__ == '__main__':
  main()
