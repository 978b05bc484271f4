"""The networks a config can name (`config.model`), each in a module of its own.

A model is an nnx.Module class with
  FIELDS: {name: fields.Field}, its config group `config.<registry name>`;
  __init__(fields, image_shape, num_classes, *, dtype, rngs);
  __call__(images, *, key=None, **traced) -> logits (batch, num_classes), where images are float
    (batch, H, W, C) in [0, 1], key is the dropout key (None: deterministic, as in evaluation)
    and traced are its Role.TRACED fields (rates a vmapped sweep may vary).
To add one, write mlp/core/models/<name>.py and add its class below; configs, training, resume,
eval, predict, export, benchmark and sweeps then take it by name.

Models hold parameters only (nnx.Param). The training step is a pure function of
(parameters, optimizer state); running statistics such as BatchNorm's would need a train-state
field of their own, so a model with other state is refused when it is built (mlp/core/build.py).
"""

from mlp.core.models.cnn import CNN
from mlp.core.models.mlp import MLP

REGISTRY = {'mlp': MLP, 'cnn': CNN}
