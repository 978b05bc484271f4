"""The networks a config can name (`config.model`), each in a module of its own.

A model is an nnx.Module class with
  FIELDS: {name: fields.Field}, its config group `config.<registry name>`;
  __init__(fields, image_shape, num_classes, *, dtype, rngs);
  __call__(images, *, train=False, key=None, **traced) -> logits (batch, num_classes), where
    images are float (batch, H, W, C) in [0, 1], train says whether this is a training step,
    key is the dropout key (None: deterministic) and traced are its Role.TRACED fields (rates a
    vmapped sweep may vary).
Parameters are nnx.Param; any other state (BatchNorm's nnx.BatchStat) travels in the train
state beside them, is updated by training passes and is checkpointed with them.
To add one, write mlp/core/models/<name>.py and add its class below; configs, training, resume,
eval, predict, export, benchmark and sweeps then take it by name.
"""

from mlp.core.models.cnn import CNN
from mlp.core.models.mlp import MLP
from mlp.core.models.resnet import ResNet

REGISTRY = {'mlp': MLP, 'cnn': CNN, 'resnet': ResNet}
