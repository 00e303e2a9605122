"""BatchNorm: each channel normalized by the batch's statistics (train mode) or by running ones
(eval), scaled and shifted; one example at a time, the batch reached by `jax.lax.pmean` over the
named vmap axis `BATCH` (under data parallelism the same reduction spans the devices).

Legend: x_HWC or x_C one example, C channels on the last axis; its "positions" are all the other
axes (H*W of them, or one after Dense). mean_b(v) = pmean over BATCH of v's mean over positions:
the mean over the batch and the positions, M = N*H*W values per channel (every example has the
same positions, so the mean of the examples' means is the mean of all M values).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from cnnjax.layers.base import BATCH, Case, Context, Layer, draw_pair, register


def _positions(x) -> tuple[int, ...]:
    return tuple(range(x.ndim - 1))


def batch_mean(v, ctx: Context):
    """mean_b(v)_C: v's mean over positions, then over the examples (pmean over BATCH); where
    the caller gives the batch size (the twin's backward pass: base.HAND_DERIVED), the psum
    divided by it."""
    v_C = jnp.mean(v, axis=_positions(v))
    if ctx.batch_size is None:
        return jax.lax.pmean(v_C, BATCH)
    return jax.lax.psum(v_C, BATCH) / ctx.batch_size


def batch_stats(x, ctx: Context):
    """(mean_C, var_C) of the batch, var biased (divided by M, as Flax). Two passes:
    E[(x - mean)^2] is never negative, where E[x^2] - mean^2 can cancel to below zero."""
    mean_C = batch_mean(x, ctx)
    return mean_C, batch_mean(jnp.square(x - mean_C), ctx)


@register
@dataclasses.dataclass(frozen=True)
class BatchNorm(Layer):
    """y = scale * (x - mean) / sqrt(var + epsilon) + bias, per channel (the last axis).

    Train mode: mean and var are the batch's (`batch_stats`, over the examples and positions),
    and `next_state` moves the running ones towards them: momentum * old + (1 - momentum) *
    batch's (Flax's BatchNorm). Eval mode: the running mean and var of the state.

    Params {"scale": ones_C, "bias": zeros_C}; state {"mean": zeros_C, "var": ones_C}: Flax's
    names, so linen's "batch_stats" collection and nnx's BatchStat variables are this state.
    Inputs of rank 3 (after a conv) and rank 1 (after Dense) alike.
    """

    momentum: float = 0.99
    epsilon: float = 1e-5
    prefix = "batchnorm"

    def output_shape(self, in_shape):
        if len(in_shape) not in (1, 3):
            raise ValueError(
                f"BatchNorm takes an example of shape (H, W, C) or (C,), got {tuple(in_shape)}"
            )
        return tuple(in_shape)

    def init(self, key, in_shape, dtype):
        return {"scale": jnp.ones(in_shape[-1:], dtype), "bias": jnp.zeros(in_shape[-1:], dtype)}

    def init_state(self, in_shape, dtype):
        return {"mean": jnp.zeros(in_shape[-1:], dtype), "var": jnp.ones(in_shape[-1:], dtype)}

    def _stats(self, x, ctx: Context):
        return batch_stats(x, ctx) if ctx.train else (ctx.state["mean"], ctx.state["var"])

    def apply(self, p, x, ctx: Context):
        mean_C, var_C = self._stats(x, ctx)
        xhat = (x - mean_C) * jax.lax.rsqrt(var_C + self.epsilon)
        return p["scale"] * xhat + p["bias"]

    def next_state(self, p, x, ctx: Context):
        """The running statistics after a train-mode step; a batch mean, the same for every
        example (chain collects it with vmap's out_axes=None)."""
        mean_C, var_C = batch_stats(x, ctx)
        m = self.momentum
        return {
            "mean": m * ctx.state["mean"] + (1 - m) * mean_C,
            "var": m * ctx.state["var"] + (1 - m) * var_C,
        }

    def vjp(self, p, x, dy, ctx: Context):
        """(dx, {"scale", "bias"}) of one example; in train mode through the batch statistics,
        so dx of one example needs every example's dy (mean_b reduces over BATCH).

        Per channel, over the M values x_m of the batch and positions: mu = (1/M) sum_m x_m,
        var = (1/M) sum_m (x_m - mu)^2, sigma = sqrt(var + eps), xhat_m = (x_m - mu) / sigma,
        y_m = scale xhat_m + bias. With d/dx_k:
            dmu = 1/M,
            dvar = (2/M) (x_k - mu)    (the term through mu is -(2/M^2) sum_m (x_m - mu) = 0),
            dsigma = dvar / (2 sigma) = xhat_k / M,
            dxhat_m = (delta_mk - 1/M) / sigma - (x_m - mu) / sigma^2 dsigma
                    = (delta_mk - 1/M - xhat_m xhat_k / M) / sigma.
        So dx_k = sum_m dy_m scale dxhat_m/dx_k
                = (scale / sigma) (dy_k - mean_b(dy) - xhat_k mean_b(dy xhat)).
        In eval mode mu and sigma are the running statistics, constants: dx = scale dy / sigma.
        Both modes: dscale = sum_m dy_m xhat_m, dbias = sum_m dy_m; here the sums over this
        example's positions, and `vjp_batch` (chain) sums them over the examples.
        """
        mean_C, var_C = self._stats(x, ctx)
        inv_sigma_C = jax.lax.rsqrt(var_C + self.epsilon)
        xhat = (x - mean_C) * inv_sigma_C
        positions = _positions(x)
        dp = {"scale": jnp.sum(dy * xhat, axis=positions), "bias": jnp.sum(dy, axis=positions)}
        if not ctx.train:
            return p["scale"] * inv_sigma_C * dy, dp
        centred = dy - batch_mean(dy, ctx) - xhat * batch_mean(dy * xhat, ctx)
        return p["scale"] * inv_sigma_C * centred, dp

    # Flax computes var as E[x^2] - E[x]^2 by default (use_fast_variance); the two-pass form
    # here is asked of it too, so that both compute the same numbers.
    def linen(self, name):
        import flax.linen as nn

        norm = nn.BatchNorm(
            momentum=self.momentum, epsilon=self.epsilon, use_fast_variance=False, name=name
        )
        return lambda x_N, train: norm(x_N, use_running_average=not train)

    def nnx(self, in_shape, rngs):
        """nnx.BatchNorm, in train mode until module.eval() (or use_running_average=True)."""
        from flax import nnx

        return nnx.BatchNorm(
            in_shape[-1],
            momentum=self.momentum,
            epsilon=self.epsilon,
            use_fast_variance=False,
            rngs=rngs,
        )

    @classmethod
    def gradcheck_cases(cls, rng):
        """2-4 examples of (H, W, C) (1-4 px, 1-3 channels) or (C,) (3-4 examples: two values per
        channel make var tiny now and then); epsilon 1e-5, 1e-3 or 0.1; train and eval mode."""
        eps = float((1e-5, 1e-3, 1e-1)[rng.integers(3)])
        layer = cls(momentum=float(rng.uniform(0.5, 0.999)), epsilon=eps)
        if rng.integers(2):
            shape, batch = (*draw_pair(rng, 1, 4), int(rng.integers(1, 4))), int(rng.integers(2, 5))
        else:
            shape, batch = (int(rng.integers(1, 6)),), int(rng.integers(3, 5))
        return [Case(layer, shape, batch=batch, train=True), Case(layer, shape, batch=batch)]
