"""Dense (ops.dense, grads.dense_vjp) and Flatten (ops.flatten, grads.flatten_vjp)."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from cnnjax import grads, ops
from cnnjax.layers.base import Case, Context, Layer, draw_pair, register


@register
@dataclasses.dataclass(frozen=True)
class Dense(Layer):
    """A fully connected layer on a flat input; params {"kernel": w_IO, "bias": b_O}, kernels
    LeCun-normal, biases zero."""

    features: int
    prefix = "dense"

    def output_shape(self, in_shape):
        if len(in_shape) != 1:
            raise ValueError(
                f"Dense needs a flat input but gets shape {tuple(in_shape)}; "
                "put Flatten() or GlobalAvgPool() before it"
            )
        return (self.features,)

    def init(self, key, in_shape, dtype):
        kernel = jax.nn.initializers.lecun_normal()(key, (in_shape[-1], self.features), dtype)
        return {"kernel": kernel, "bias": jnp.zeros((self.features,), dtype)}

    def apply(self, p, x_I, ctx: Context):
        return ops.dense(x_I, p["kernel"], p["bias"])

    def vjp(self, p, x_I, dy_O, ctx: Context):
        dx, dw, db = grads.dense_vjp(x_I, p["kernel"], dy_O)
        return dx, {"kernel": dw, "bias": db}

    def vjp_batch(self, p, x_NI, dy_NO, ctx: Context):
        """The batch's dw = sum_n outer(x_n, dy_n) = x^T dy, one matmul."""
        dw, db = x_NI.T @ dy_NO, jnp.sum(dy_NO, axis=0)
        return dy_NO @ p["kernel"].T, {"kernel": dw, "bias": db}

    def linen(self, name):
        import flax.linen as nn

        dense = nn.Dense(self.features, name=name)
        return lambda x_NI, train: dense(x_NI)

    def nnx(self, in_shape, rngs):
        from flax import nnx

        return nnx.Linear(in_shape[-1], self.features, rngs=rngs)

    @classmethod
    def gradcheck_cases(cls, rng):
        (i, o) = draw_pair(rng, 1, 8)
        return [Case(cls(o), (i,))]


@register
@dataclasses.dataclass(frozen=True)
class Flatten(Layer):
    """H x W x C -> H*W*C, row-major (ops.flatten)."""

    def output_shape(self, in_shape):
        return (math.prod(in_shape),)

    def apply(self, p, x_HWC, ctx: Context):
        return ops.flatten(x_HWC)

    def vjp(self, p, x_HWC, dy_F, ctx: Context):
        return grads.flatten_vjp(x_HWC, dy_F), {}

    def flax(self, x_NHWC, *, train):
        return x_NHWC.reshape((x_NHWC.shape[0], -1))  # row-major H, W, C, as ops.flatten

    @classmethod
    def gradcheck_cases(cls, rng):
        return [Case(cls(), (*draw_pair(rng, 1, 6), int(rng.integers(1, 4))))]
