"""A small residual network with BatchNorm on MNIST, in the style of Flax's ImageNet ResNet.

3x3 stem (16), three stages of one basic block each (16, 32, 64 channels; stride 2 from the
second), global average pooling, Dense 10 (mlp/core/models/resnet.py). BatchNorm's running
statistics travel in the train state. The CNN's optimizer (configs/cnn.py): Adam with a cosine
schedule, batch 128.

Command:
  python main.py --config=configs/resnet.py

Measured (Dec 8 2026, a 2-core Intel Xeon, nothing else running): test accuracy 99.21%,
test loss 0.0280 after 3 epochs (validation 97.98%, 98.73%, 99.00%); 186 s of training steps,
about 62 s an epoch at one step per call (pacing measured 0.149 s a step alone against 3.38 s
inside a scan), 232 s for the whole command, 34 s of it the one-time pacing measurement.
"""

import ml_collections

from configs import cnn


def get_config() -> ml_collections.ConfigDict:
  """The CNN's optimizer, batch and schedule, for 3 epochs."""
  config = cnn.get_config()
  config.model = 'resnet'
  config.optim.num_epochs = 3
  return config
