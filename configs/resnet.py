"""A small residual network with BatchNorm on MNIST, in the style of Flax's ImageNet ResNet.

3x3 stem (16), three stages of one basic block each (16, 32, 64 channels; stride 2 from the
second), global average pooling, Dense 10 (mlp/core/models/resnet.py). BatchNorm's running
statistics travel in the train state. Adam with a cosine schedule, batch 128.

Command:
  python main.py --config=configs/resnet.py

Measured: see the README's results table.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model = 'resnet'
  config.optim.batch_size = 128
  config.optim.learning_rate = 2e-3
  config.optim.schedule = 'cosine'
  config.optim.warmup_epochs = 0.5
  config.optim.num_epochs = 3
  return config
