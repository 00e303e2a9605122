"""Elementwise activations: ReLU (ops.relu, grads.relu_vjp), Tanh and GELU (their rules here).

Each acts on every entry alike, so its vjp is dx = dy * f'(x), entry by entry (the Jacobian is
diagonal); the derivations of f' are in the vjp docstrings."""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
from jax import lax

from cnnjax import grads, ops
from cnnjax.layers.base import Case, Context, Layer, draw_pair, register


def _any_shape(rng) -> tuple[int, ...]:
    return (*draw_pair(rng, 1, 6), int(rng.integers(1, 4)))


@dataclasses.dataclass(frozen=True)
class _Elementwise(Layer):
    def output_shape(self, in_shape):
        return tuple(in_shape)


@register
@dataclasses.dataclass(frozen=True)
class ReLU(_Elementwise):
    """max(x, 0); its derivative at the kink is 0 (a policy, checked on tie-heavy data)."""

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


@register
@dataclasses.dataclass(frozen=True)
class Tanh(_Elementwise):
    """tanh(x) = (e^x - e^-x) / (e^x + e^-x), smooth everywhere (no kink, no tie policy)."""

    def apply(self, p, x, ctx: Context):
        return jnp.tanh(x)

    def vjp(self, p, x, dy, ctx: Context):
        """With t = tanh(x) = sinh / cosh, the quotient rule gives
            tanh' = (cosh^2 - sinh^2) / cosh^2 = 1 - tanh^2,
        so dx = dy * (1 - t^2): the forward's own output is all the rule needs."""
        t = jnp.tanh(x)
        return dy * (1 - t * t), {}

    def flax(self, x_NHWC, *, train):
        import flax.linen as nn

        return nn.tanh(x_NHWC)

    @classmethod
    def gradcheck_cases(cls, rng):
        return [Case(cls(), _any_shape(rng))]


_SQRT_2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_CUBIC = 0.044715  # the tanh approximation's cubic coefficient (Hendrycks & Gimpel, 2016)


@register
@dataclasses.dataclass(frozen=True)
class GELU(_Elementwise):
    """x * Phi(x), Phi the standard normal CDF: exactly, Phi(x) = (1 + erf(x / sqrt 2)) / 2
    (approximate=False), or with Phi(x) ~ (1 + tanh(u)) / 2, u = sqrt(2 / pi) (x + 0.044715 x^3)
    (approximate=True, the default of jax.nn.gelu and flax.linen.gelu, which compute the same)."""

    approximate: bool = True

    def apply(self, p, x, ctx: Context):
        if self.approximate:
            u = _SQRT_2_OVER_PI * (x + _CUBIC * x**3)
            return x * (1 + jnp.tanh(u)) / 2
        return x * (1 + lax.erf(x / _SQRT_2)) / 2

    def vjp(self, p, x, dy, ctx: Context):
        """The product rule on x * Phi(x): gelu' = Phi(x) + x Phi'(x).

        Exact: Phi' is the normal density phi(x) = exp(-x^2 / 2) / sqrt(2 pi) (d/dx erf(x / sqrt 2)
        = 2 / sqrt(pi) exp(-x^2 / 2) / sqrt 2, halved), so gelu' = Phi(x) + x phi(x).

        Approximate: Phi(x) ~ (1 + t) / 2 with t = tanh(u), u = sqrt(2 / pi) (x + c x^3), so by the
        chain rule and tanh' = 1 - tanh^2, Phi' ~ (1 - t^2) u' / 2 with u' = sqrt(2 / pi)
        (1 + 3 c x^2), and gelu' = (1 + t) / 2 + x (1 - t^2) u' / 2. Then dx = dy * gelu'(x)."""
        if self.approximate:
            t = jnp.tanh(_SQRT_2_OVER_PI * (x + _CUBIC * x**3))
            du = _SQRT_2_OVER_PI * (1 + 3 * _CUBIC * x * x)
            return dy * ((1 + t) / 2 + x * (1 - t * t) * du / 2), {}
        cdf = (1 + lax.erf(x / _SQRT_2)) / 2
        density = _INV_SQRT_2PI * jnp.exp(-x * x / 2)
        return dy * (cdf + x * density), {}

    def flax(self, x_NHWC, *, train):
        import flax.linen as nn

        return nn.gelu(x_NHWC, approximate=self.approximate)

    @classmethod
    def gradcheck_cases(cls, rng):
        shape = _any_shape(rng)
        return [Case(cls(approximate=a), shape) for a in (True, False)]
