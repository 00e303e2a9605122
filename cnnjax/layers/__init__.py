"""Layer kinds, one file each, all through one protocol (`base.Layer`): a new kind is a new file
with a `@register`ed class and one import line here. `chain` runs a spec of them."""

from cnnjax.layers.activations import GELU, ReLU, Tanh
from cnnjax.layers.base import (
    AUTODIFF_REFERENCE,
    BATCH,
    EVAL,
    HAND_DERIVED,
    KINDS,
    PLAIN,
    Case,
    Context,
    Layer,
    register,
)
from cnnjax.layers.batchnorm import BatchNorm
from cnnjax.layers.conv import Conv
from cnnjax.layers.dense import Dense, Flatten
from cnnjax.layers.dropout import Dropout
from cnnjax.layers.pooling import AvgPool, GlobalAvgPool, MaxPool
from cnnjax.layers.residual import Residual

__all__ = [
    "AUTODIFF_REFERENCE",
    "BATCH",
    "EVAL",
    "GELU",
    "HAND_DERIVED",
    "KINDS",
    "PLAIN",
    "AvgPool",
    "BatchNorm",
    "Case",
    "Context",
    "Conv",
    "Dense",
    "Dropout",
    "Flatten",
    "GlobalAvgPool",
    "Layer",
    "MaxPool",
    "ReLU",
    "Residual",
    "Tanh",
    "register",
]
