"""A researcher's own layer kind, written outside cnnjax through its public protocol only
(cnnjax.layers.Layer, @register) and a spec that uses it: what README's "Add your own layer"
walks through. Imported by tests, and by entry points via --module / --config.model.modules."""

import dataclasses

import jax.numpy as jnp

from cnnjax import layers, models


@layers.register
@dataclasses.dataclass(frozen=True)
class PReLU(layers.Layer):
    """y = x where x > 0, a_c x elsewhere: a ReLU whose negative slope a_c is learned per
    channel (He et al., 2015). Params {"slope": a_C}, init_slope at the start.

    dy/dx = 1 where x > 0 and a_c where x <= 0 (a_c at the kink x = 0, where jnp.where takes its
    second branch: a policy), so dx = dy where x > 0, a_c dy elsewhere. y depends on a_c only
    where x <= 0, through a_c x: dL/da_c = sum over positions (h, w) of dy x where x <= 0."""

    init_slope: float = 0.25
    prefix = "prelu"

    def output_shape(self, in_shape):
        return tuple(in_shape)

    def init(self, key, in_shape, dtype):
        return {"slope": jnp.full(in_shape[-1:], self.init_slope, dtype)}

    def apply(self, p, x, ctx):
        return jnp.where(x > 0, x, p["slope"] * x)

    def vjp(self, p, x, dy, ctx):
        negative = x <= 0
        dx = jnp.where(negative, p["slope"] * dy, dy)
        positions = tuple(range(x.ndim - 1))  # every axis but the channels
        return dx, {"slope": jnp.sum(jnp.where(negative, dy * x, 0.0), axis=positions)}

    @classmethod
    def gradcheck_cases(cls, rng):
        x_shape = (int(rng.integers(1, 6)), int(rng.integers(1, 6)), int(rng.integers(1, 4)))
        return [layers.Case(cls(), x_shape, batch=2, tie_kinds=("integers", "plateaus"))]


models.SPECS["prelu_cnn"] = (
    models.Conv(8, 3),
    PReLU(),
    models.MaxPool(2),
    models.Conv(16, 3),
    PReLU(),
    models.MaxPool(2),
    models.Flatten(),
    models.Dense(10),
)
