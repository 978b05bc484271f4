"""The convolutional network of Flax's MNIST example, on MNIST.

conv 32 3x3, ReLU, avg-pool 2, conv 64 3x3, ReLU, avg-pool 2, Dense 256, ReLU, Dense 10
(mlp/models/cnn.py), Adam with a cosine schedule, batch 128, 10 epochs.

Command:
  python main.py --config=configs/cnn.py

Measured: see README (results table).
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model = 'cnn'
  config.optim.batch_size = 128
  config.optim.learning_rate = 2e-3
  config.optim.schedule = 'cosine'
  config.optim.warmup_epochs = 0.5
  config.optim.num_epochs = 10
  return config
