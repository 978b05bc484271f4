"""The original Keras notebook: every field at the default that mlp/core/configuration.py declares.

tfds `mnist`, pixels / 255, 10% of train held out for validation (fixed by data.seed), batch
100, MLP 784-50-50-10 ReLU, Adam 1e-3, sparse cross-entropy, 10 epochs. Each field, its
default, its role and its purpose are declared once, in mlp/core/configuration.py (and the models'
own fields in mlp/core/models/); variants import this file and override values.

Command:
  python main.py --config=configs/default.py

Measured: test accuracy 97.20%, test loss 0.0909 after 10 epochs (the notebook reached 96.92%),
on the 2-core AMD EPYC CPU (Nov 2026).
"""

import ml_collections

from mlp.core import configuration
from mlp.tools import fields


def get_config() -> ml_collections.ConfigDict:
  """Returns the notebook's hyperparameters, and the benchmark's settings beside them."""
  return configuration.defaults(fields.GROUPS)
