"""MaxPool and AvgPool (ops.max_pool / avg_pool, grads.max_pool_vjp / avg_pool_vjp), and
GlobalAvgPool (the mean over all positions, its rule here)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from cnnjax import grads, ops
from cnnjax.layers.base import Case, Context, Layer, draw_padding, draw_pair, redraw, register


@dataclasses.dataclass(frozen=True)
class _Pool(Layer):
    window: int | ops.Pair = 2
    stride: int | ops.Pair | None = None  # None: the window (non-overlapping)
    padding: ops.Padding = "VALID"

    def output_shape(self, in_shape):
        return ops.pool_shape(in_shape, self.window, self.stride, self.padding)

    def _geometry(self):
        """(window, stride) as pairs: Flax pools default to stride 1, not to the window as the
        spec does, so the stride is always passed to them explicitly."""
        window = ops.as_pair(self.window, "window")
        return window, window if self.stride is None else ops.as_pair(self.stride, "stride")

    @classmethod
    def _draw(cls, rng, **extra):
        """x 3-8 px, 1-3 channels, window 1-3, stride 1-3, any padding."""

        def draw():
            x_shape = (*draw_pair(rng, 3, 8), int(rng.integers(1, 4)))
            window, stride = draw_pair(rng, 1, 3), draw_pair(rng, 1, 3)
            return cls(window, stride, draw_padding(rng), **extra), x_shape

        return redraw(draw)


@register
@dataclasses.dataclass(frozen=True)
class MaxPool(_Pool):
    """The max of each window; padding is -inf, never the max."""

    def apply(self, p, x_HWC, ctx: Context):
        """Two forms of the same values. Train mode, where gradients are taken: ops.max_pool,
        whose jax.grad of a tiling pool is selects (the whole jax.grad step ~2x faster on
        XLA:CPU than through reduce_window's select-and-scatter, and the hand-derived step's
        forward faster too). Eval mode, forward only: one lax.reduce_window, which XLA:CPU
        fuses into a faster kernel (the reference CNN's evaluation at batch 1000: 43k against
        22k images/s)."""
        pool = ops.max_pool if ctx.train else ops.max_pool_reduce_window
        return pool(x_HWC, self.window, self.stride, self.padding)

    def autodiff_reference(self, p, x_HWC, ctx: Context):
        """One lax.reduce_window: its jax.grad (select-and-scatter) is a derivation of its own,
        apart from the selects of ops.max_pool_tiled and from the hand rule."""
        return ops.max_pool_reduce_window(x_HWC, self.window, self.stride, self.padding)

    def vjp(self, p, x_HWC, dy_HWC, ctx: Context):
        pool = dict(window=self.window, stride=self.stride, padding=self.padding)
        return grads.max_pool_vjp(x_HWC, dy_HWC, **pool), {}

    def flax(self, x_NHWC, *, train):
        import flax.linen as nn

        return nn.max_pool(x_NHWC, *self._geometry(), self.padding)

    @classmethod
    def gradcheck_cases(cls, rng):
        """Ties are a policy here (the first arg-max in row-major window order); in train mode
        too, where apply is the form whose jax.grad training takes."""
        layer, x_shape = cls._draw(rng)
        ties = ("integers", "plateaus")
        return [Case(layer, x_shape, tie_kinds=ties, train=t) for t in (False, True)]


@register
@dataclasses.dataclass(frozen=True)
class AvgPool(_Pool):
    """The mean of each window, over the window's size or, with count_include_pad=False, over
    its real (unpadded) inputs."""

    count_include_pad: bool = True

    def apply(self, p, x_HWC, ctx: Context):
        include = self.count_include_pad
        return ops.avg_pool(
            x_HWC, self.window, self.stride, self.padding, count_include_pad=include
        )

    def vjp(self, p, x_HWC, dy_HWC, ctx: Context):
        pool = dict(window=self.window, stride=self.stride, padding=self.padding)
        return grads.avg_pool_vjp(
            x_HWC, dy_HWC, **pool, count_include_pad=self.count_include_pad
        ), {}

    def flax(self, x_NHWC, *, train):
        import flax.linen as nn

        # Flax divides by the integer np.prod(window), which strict dtype promotion rejects
        # (float32 / int32), and with count_include_pad=False by counts made with jnp.ones,
        # float64 under x64; so standard promotion, then back to x's dtype as ops.avg_pool.
        with jax.numpy_dtype_promotion("standard"):
            y_NHWC = nn.avg_pool(
                x_NHWC, *self._geometry(), self.padding, count_include_pad=self.count_include_pad
            )
        return y_NHWC.astype(x_NHWC.dtype)

    @classmethod
    def gradcheck_cases(cls, rng):
        """One geometry, dividing by the window size and by the count of real inputs."""
        layer, x_shape = cls._draw(rng)
        return [
            Case(dataclasses.replace(layer, count_include_pad=c), x_shape) for c in (True, False)
        ]


@register
@dataclasses.dataclass(frozen=True)
class GlobalAvgPool(Layer):
    """H x W x C -> C: each channel's mean over the H*W positions, a flat output (Dense takes it
    as it is, no Flatten) that does not depend on the image size."""

    def output_shape(self, in_shape):
        if len(in_shape) != 3:
            raise ValueError(
                f"GlobalAvgPool needs an H x W x C input but gets shape {tuple(in_shape)}; "
                "put it before Flatten and Dense, not after"
            )
        return (in_shape[2],)

    def apply(self, p, x_HWC, ctx: Context):
        return jnp.mean(x_HWC, axis=(0, 1))

    def vjp(self, p, x_HWC, dy_C, ctx: Context):
        """y_c = (1 / HW) sum_{i,j} x_ijc, so dy_c / dx_ijc = 1 / HW for every position: each
        position gets its channel's error over HW, dx_ijc = dy_c / HW (dy_C broadcast)."""
        h, w, _ = x_HWC.shape
        return jnp.broadcast_to(dy_C / (h * w), x_HWC.shape), {}

    def flax(self, x_NHWC, *, train):
        return jnp.mean(x_NHWC, axis=(1, 2))  # Flax has no global pool: the same mean

    @classmethod
    def gradcheck_cases(cls, rng):
        return [Case(cls(), (*draw_pair(rng, 1, 6), int(rng.integers(1, 4))))]
