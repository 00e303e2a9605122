"""cnnjax: convolutional networks as readable pure JAX functions, with hand-derived gradients."""

from cnnjax.losses import (
    accuracy,
    binary_cross_entropy,
    cross_entropy,
    log_softmax,
    softmax,
)
from cnnjax.ops import avg_pool, conv2d, dense, flatten, max_pool, relu

__all__ = [
    "accuracy",
    "avg_pool",
    "binary_cross_entropy",
    "conv2d",
    "cross_entropy",
    "dense",
    "flatten",
    "log_softmax",
    "max_pool",
    "relu",
    "softmax",
]
