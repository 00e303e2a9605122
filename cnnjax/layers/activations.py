"""Elementwise activations: ReLU (ops.relu, grads.relu_vjp)."""

from __future__ import annotations

import dataclasses

from cnnjax import grads, ops
from cnnjax.layers.base import Case, Context, Layer, draw_pair, register


def _any_shape(rng) -> tuple[int, ...]:
    return (*draw_pair(rng, 1, 6), int(rng.integers(1, 4)))


@register
@dataclasses.dataclass(frozen=True)
class ReLU(Layer):
    """max(x, 0); its derivative at the kink is 0 (a policy, checked on tie-heavy data)."""

    def output_shape(self, in_shape):
        return tuple(in_shape)

    def apply(self, p, x, ctx: Context):
        return ops.relu(x)

    def vjp(self, p, x, dy, ctx: Context):
        return grads.relu_vjp(x, dy), {}

    def flax(self, x_NHWC, *, train):
        import flax.linen as nn

        return nn.relu(x_NHWC)

    @classmethod
    def gradcheck_cases(cls, rng):
        return [Case(cls(), _any_shape(rng), tie_kinds=("integers", "plateaus"))]
