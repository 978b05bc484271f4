"""The MNIST speed record's recipe written by hand in plain JAX: the yardstick for speedrun.py.

tuomaso/train_mnist_fast's network and optimizer: conv 24 5x5, max-pool 2, conv 32 3x3,
max-pool 2, dense 256, dense 10 (ReLU), Adam lr 1e-2 with betas (0.7, 0.9), a one-cycle
schedule, batch 256, one epoch; here on the project's 54,000 training examples, data on the
device, one jitted step per batch. It prints one JSON line: training seconds (compilation
excluded), whole-process seconds and test accuracy.

  python docs/speedrun_reference.py --seed=0
  python -m mlp.tools.ab --a_args=--seed=0 -- python docs/speedrun_reference.py  # timing
"""

import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import input_pipeline  # noqa: E402
import mlp  # noqa: E402  (mlp.STARTED: when this process started)
from configs import default  # noqa: E402


def pool(x):
  b, h, w, c = x.shape
  x = x[:, : h // 2 * 2, : w // 2 * 2]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def conv(x, w):
  return jax.lax.conv_general_dilated(
    x, w, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )


def init(key):
  shapes = {'c1': (5, 5, 1, 24), 'c2': (3, 3, 24, 32), 'd1': (5 * 5 * 32, 256), 'd2': (256, 10)}
  keys = jax.random.split(key, len(shapes))
  params = {}
  for k, (name, shape) in zip(keys, shapes.items(), strict=True):
    fan_in = int(np.prod(shape[:-1]))
    params[name] = jax.random.normal(k, shape) * np.sqrt(2.0 / fan_in)
    params[name + '_b'] = jnp.zeros(shape[-1])
  return params


def logits(params, images):
  x = images.astype(jnp.float32) / 255.0
  x = pool(jax.nn.relu(conv(x, params['c1']) + params['c1_b']))
  x = pool(jax.nn.relu(conv(x, params['c2']) + params['c2_b']))
  x = jax.nn.relu(x.reshape(x.shape[0], -1) @ params['d1'] + params['d1_b'])
  return x @ params['d2'] + params['d2_b']


def main(seed: int) -> dict:
  config = default.get_config()
  splits = input_pipeline.load_splits(config)
  images, labels = jax.device_put(splits.train.images), jax.device_put(splits.train.labels)
  batch, steps = 256, len(splits.train) // 256
  schedule = optax.cosine_onecycle_schedule(steps, 1e-2, 0.25)
  optimizer = optax.adam(schedule, b1=0.7, b2=0.9)
  params = init(jax.random.key(seed))
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, indices):
    def loss(p):
      out = logits(p, images[indices])
      return optax.softmax_cross_entropy_with_integer_labels(out, labels[indices]).mean()

    grads = jax.grad(loss)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  order = np.random.default_rng(seed).permutation(len(splits.train))[: steps * batch]
  order = jnp.asarray(order.reshape(steps, batch))
  jax.block_until_ready(step(params, opt_state, order[0]))  # Compiles; the result is dropped.
  start = time.perf_counter()
  for i in range(steps):
    params, opt_state = step(params, opt_state, order[i])
  jax.block_until_ready(params)
  train_seconds = time.perf_counter() - start
  predictions = jax.jit(lambda p, x: logits(p, x).argmax(-1))(params, splits.test.images)
  accuracy = float((np.asarray(predictions) == splits.test.labels).mean())
  return {
    'seed': seed,
    'train_seconds': train_seconds,
    'elapsed_seconds': time.perf_counter() - mlp.STARTED,
    'test_accuracy': accuracy,
  }


if __name__ == '__main__':
  seed = int(next((a.split('=')[1] for a in sys.argv[1:] if a.startswith('--seed=')), 0))
  print(json.dumps(main(seed)))
