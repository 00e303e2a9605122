"""A researcher's own layers, written against the public protocol only (cnnjax.layers.Layer), and
a spec that uses them: what `--config.model.modules=tests.user_layers --config.model.spec=
user_net` trains without a change to cnnjax.

    RunningMean  mean-only batch normalization (Salimans & Kingma, 2016): y = x - mean + bias,
                 the mean over the batch (and H, W) in train mode, its running average (state)
                 in eval mode; it keeps state and couples the examples of a batch.
    NoisyScale   y = x * (1 + sigma * eps), eps ~ N(0, 1) drawn from the layer's key in train
                 mode; y = x in eval mode: a random layer, as dropout is.

Legend: x_HWC one example, C channels; BATCH the vmapped axis of examples.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from cnnjax import layers, models

MOMENTUM = 0.75  # the running mean's weight on its old value


def _spatial_mean(x_HWC):
    """The mean over every axis but the last (channels): shape (C,)."""
    return jnp.mean(x_HWC, axis=tuple(range(x_HWC.ndim - 1)))


@layers.register
@dataclasses.dataclass(frozen=True)
class RunningMean(layers.Layer):
    momentum: float = MOMENTUM
    prefix: ClassVar[str] = "runningmean"

    def output_shape(self, in_shape):
        return tuple(in_shape)

    def init(self, key, in_shape, dtype):
        return {"bias": jnp.zeros(in_shape[-1:], dtype)}

    def init_state(self, in_shape, dtype):
        return {"mean": jnp.zeros(in_shape[-1:], dtype)}

    def _mean(self, x, ctx):
        """The batch's mean (train mode: a mean over the vmapped examples) or the running one."""
        if ctx.train:
            return jax.lax.pmean(_spatial_mean(x), layers.BATCH)
        return ctx.state["mean"]

    def apply(self, p, x, ctx):
        return x - self._mean(x, ctx) + p["bias"]

    def next_state(self, p, x, ctx):
        """m' = momentum * m + (1 - momentum) * the batch's mean."""
        mean = ctx.state["mean"]
        return {"mean": self.momentum * mean + (1 - self.momentum) * self._mean(x, ctx)}

    def vjp(self, p, x, dy, ctx):
        """y_n = x_n - (1/N) sum_m mean_HW(x_m) + b in train mode, so dL/dx_n = dy_n -
        (1/N) sum_m mean_HW(dy_m) (every example's mean moves every output); in eval mode the
        mean is a constant: dx = dy. dL/db = sum_HW dy (this example's share)."""
        dx = dy - jax.lax.pmean(_spatial_mean(dy), layers.BATCH) if ctx.train else dy
        return dx, {"bias": jnp.sum(dy, axis=tuple(range(dy.ndim - 1)))}


@layers.register
@dataclasses.dataclass(frozen=True)
class NoisyScale(layers.Layer):
    sigma: float = 0.5

    def output_shape(self, in_shape):
        return tuple(in_shape)

    def _scale(self, x, ctx):
        """1 + sigma * eps, eps from the layer's key folded with the example's index (each
        example its own draw), in x's dtype; 1 in eval mode."""
        if not ctx.train:
            return jnp.ones((), x.dtype)
        key = jax.random.fold_in(ctx.key, jax.lax.axis_index(layers.BATCH))
        return (1 + self.sigma * jax.random.normal(key, x.shape)).astype(x.dtype)

    def apply(self, p, x, ctx):
        return x * self._scale(x, ctx)

    def vjp(self, p, x, dy, ctx):
        """y = x * s with s drawn from the same key again: dx = dy * s; no params."""
        return dy * self._scale(x, ctx), {}


USER_NET = (
    RunningMean(),
    NoisyScale(),
    models.Conv(4, 3),
    RunningMean(),
    models.ReLU(),
    models.MaxPool(2),
    models.Flatten(),
    models.Dense(10),
)
models.SPECS["user_net"] = USER_NET
