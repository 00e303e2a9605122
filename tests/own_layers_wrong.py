"""A layer kind registered with a planted wrong rule (its slope gradient sums over every
position, not only where x <= 0): `experiments.gradcheck --module` must fail it."""

import dataclasses

import jax.numpy as jnp

from cnnjax import layers
from tests.own_layers import PReLU


@layers.register
@dataclasses.dataclass(frozen=True)
class PReLUWrongSlope(PReLU):
    def vjp(self, p, x, dy, ctx):
        dx, _ = super().vjp(p, x, dy, ctx)
        return dx, {"slope": jnp.sum(dy * x, axis=tuple(range(x.ndim - 1)))}
