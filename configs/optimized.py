"""The best plain MLP configs/sweep.py found: 2 x 1024, dropout, AdamW, a cosine schedule.

Written by the sweep as best_config.py (trial c9e90680e572: the highest validation accuracy,
98.75%, of 12 trials; test accuracy was never used to choose); get_config() is its, unchanged:
  python main.py --mode=sweep --config=configs/sweep.py --workdir=runs/sweep

Command:
  python main.py --config=configs/optimized.py

Measured: test accuracy 98.70% (validation 98.50%) after 30 epochs; 92 s of training epochs,
96 s for the whole command, on the 2-core AMD EPYC CPU, otherwise idle (Nov 2026, re-measured
after the last changes to the training step). The sweep's 98.75% validation predates the
training order's move to NumPy (input_pipeline.epoch_order), which changed the shuffle.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.optim.batch_size = 128
  config.mlp.dropout_rate = 0.443
  config.mlp.hidden_sizes = (1024, 1024)
  config.optim.label_smoothing = 0.006717
  config.optim.learning_rate = 0.00228
  config.optim.num_epochs = 30
  config.optim.schedule = 'cosine'
  config.optim.warmup_epochs = 1.0
  config.optim.weight_decay = 0.002245
  return config
