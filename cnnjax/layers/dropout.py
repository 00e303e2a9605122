"""Dropout: in train mode each unit kept with probability 1 - rate and the kept ones scaled by
1 / (1 - rate) (inverted dropout, as Flax), so eval mode is the identity; one example at a time,
its mask its own row of the batch's mask (the batch reached through the named vmap axis BATCH).

Legend: x one example of any shape, x_N the batch; mask_N the batch's keep mask (True: kept).
"""

from __future__ import annotations

import dataclasses
import numbers

import jax
import jax.numpy as jnp

from cnnjax.layers.base import BATCH, Case, Context, Layer, draw_pair, register


@register
@dataclasses.dataclass(frozen=True)
class Dropout(Layer):
    """y = mask * x / (1 - rate) in train mode, y = x in eval mode (and for rate 0); no params,
    no state. `rate` lies in [0, 1).

    The mask is Flax's: nn.Dropout draws jax.random.bernoulli(key, 1 - rate, x_N.shape) for the
    whole batch, and so does each example here (vmap computes that draw once: it does not depend
    on the example), keeping its own row, jax.lax.axis_index(BATCH). The key is the layer's
    (`ctx.key`: chain folds the network's key with the layer's position). Given the same key,
    nnx.Dropout(rate)(x_N, rngs=key) and linen's nn.Dropout(rate).apply({}, x_N, rng=key) draw
    the same mask; linen given rngs={"dropout": key} first derives its layer's key from that one
    (make_rng: the module's path and a call count folded in), and draws with the derived key.
    """

    rate: float

    def __post_init__(self):
        super().__post_init__()
        rate = self.rate
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0 <= rate < 1:
            raise ValueError(f"Dropout rate must lie in [0, 1), got {rate!r}")

    def output_shape(self, in_shape):
        return tuple(in_shape)

    def _drops(self, ctx: Context) -> bool:
        return ctx.train and self.rate > 0

    def mask(self, x, ctx: Context):
        """This example's keep mask: its row of the batch's bernoulli(key, 1 - rate) draw."""
        if ctx.key is None:
            raise ValueError(
                "Dropout in train mode needs a random key; pass key= (e.g. models.loss(..., "
                "train=True, key=jax.random.fold_in(dropout_key, step)))"
            )
        n = ctx.batch_size or jax.lax.axis_size(BATCH)  # given in the twin's backward pass
        mask_N = jax.random.bernoulli(ctx.key, 1.0 - self.rate, (n, *jnp.shape(x)))
        return mask_N[jax.lax.axis_index(BATCH)]

    def apply(self, p, x, ctx: Context):
        if not self._drops(ctx):
            return x
        keep = 1.0 - self.rate
        return jax.lax.select(self.mask(x, ctx), x / keep, jnp.zeros_like(x))  # as Flax

    def vjp(self, p, x, dy, ctx: Context):
        """y_i = m_i x_i / (1 - rate) is linear in x with the diagonal Jacobian m_i / (1 - rate),
        so dx_i = m_i dy_i / (1 - rate): the forward's own mask (the same key and row draw the
        same bits again), the dropped units' gradient exactly zero. Eval mode (and rate 0):
        the identity, dx = dy."""
        if not self._drops(ctx):
            return dy, {}
        keep = 1.0 - self.rate
        return jax.lax.select(self.mask(x, ctx), dy / keep, jnp.zeros_like(dy)), {}

    def flax(self, x_NHWC, *, train):
        """Inside a linen module: an unnamed nn.Dropout, its key from make_rng("dropout")."""
        import flax.linen as nn

        return nn.Dropout(self.rate, deterministic=not train)(x_NHWC)

    def nnx(self, in_shape, rngs):
        """nnx.Dropout with its own stream of rngs["dropout"]; eval: module.eval()."""
        from flax import nnx

        return nnx.Dropout(self.rate, rngs=rngs)

    @classmethod
    def gradcheck_cases(cls, rng):
        """2-3 examples of (H, W, C) (1-5 px, 1-3 channels) or (F,), rate 0-0.9; train mode
        (a fixed key makes the layer linear in x, as FD needs) and eval."""
        layer = cls(float(rng.choice((0.0, 0.1, 0.5, 0.9))))
        if rng.integers(2):
            shape = (*draw_pair(rng, 1, 5), int(rng.integers(1, 4)))
        else:
            shape = (int(rng.integers(1, 9)),)
        batch = int(rng.integers(2, 4))
        return [Case(layer, shape, batch=batch, train=True), Case(layer, shape, batch=batch)]
