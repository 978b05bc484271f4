"""99% on MNIST in the fewest seconds on a CPU: the speed record's network and schedule.

tuomaso/train_mnist_fast's recipe (docs/speedrun.md has every idea tried): conv 24 5x5, max-pool
2, conv 32 3x3, max-pool 2, dense 256, dense 10, no padding; Adam with betas (0.7, 0.9) under a
one-cycle schedule peaking at 1e-2 after a quarter of training; batch 256; plus label smoothing
0.1, which let 0.8 of an epoch (169 steps) do what a whole one did. A fixed schedule: no early
stop. Checkpoints, pictures and per-epoch validation are off: a speedrun's output is its test line.

Command:
  python main.py --config=configs/speedrun.py --config.seed=0
Time to 99% validation accuracy, seeds 0-4:
  python main.py --mode=benchmark --config=configs/speedrun.py \\
    --config.benchmark.target_accuracy=0.99 --config.benchmark.seeds=5

Measured: see docs/speedrun.md (seeds 0-4, test accuracy, training and whole-command seconds,
against the recipe written by hand, docs/speedrun_reference.py, alternated).
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model = 'cnn'
  config.cnn.conv_features = (24, 32)
  config.cnn.kernel_sizes = (5, 3)
  config.cnn.padding = 'VALID'
  config.cnn.pool = 'max'
  config.cnn.dense_size = 256
  config.optim.batch_size = 256
  config.optim.num_epochs = 0.8
  config.optim.learning_rate = 1e-2
  config.optim.beta1 = 0.7
  config.optim.beta2 = 0.9
  config.optim.schedule = 'onecycle'
  config.optim.warmup_epochs = 0.2  # A quarter of training.
  config.optim.label_smoothing = 0.1
  config.run.checkpoint_every_epochs = 0
  config.run.pictures = False
  return config
