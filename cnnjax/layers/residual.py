"""Residual: y = body(x) + skip(x), a chain of layers (the body) beside a shortcut (He et al. 2016).

The body is a spec, run by `chain` on one example or a batch; the skip is x itself when the body
keeps x's shape, else a projection: by default a 1x1 convolution Conv(C', 1, stride), its stride
per axis the smallest s with (H - 1) // s + 1 = H' (the body's output H' x W' x C'), or Dense(C')
on flat inputs; any other layer mapping x to the body's output shape may be given instead
(projection=Conv(C', 1, 2, "SAME"), an AvgPool then a Conv in a Residual of its own, ...).

Params are the residual's own dict: its body's params by the body's layer names, and the
projection's, if it has any: {"conv1": {"kernel", "bias"}, "conv2": ..., "projection":
{"kernel": w_11CC', "bias": b_C'}}. Its state, if its body keeps any, is the body's state dict
the same way ({"batchnorm1": {...}}). Legend: x_HWC one example, x_N... a batch.
"""

from __future__ import annotations

import dataclasses
import functools

import jax

import cnnjax.layers.chain as chain
from cnnjax.layers.activations import ReLU
from cnnjax.layers.base import (
    AUTODIFF_REFERENCE,
    Case,
    Context,
    Layer,
    draw_pair,
    redraw,
    register,
)
from cnnjax.layers.conv import Conv
from cnnjax.layers.dense import Dense

PROJECTION = "projection"  # the projection's key in a residual's params


def _stride(h: int, h_out: int) -> int | None:
    """The smallest stride s with which a 1x1 VALID convolution maps h positions to h_out:
    (h - 1) // s + 1 = h_out; None if there is none (h_out > h, or a size between strides)."""
    return next((s for s in range(1, h + 1) if (h - 1) // s + 1 == h_out), None)


@register
@dataclasses.dataclass(frozen=True)
class Residual(Layer):
    """body(x) + skip(x): `body` a spec (a tuple of layers; a config's list is made one), `skip`
    x or `projection` (None: chosen from the shapes, see the module docstring)."""

    body: tuple[Layer, ...]
    projection: Layer | None = None
    prefix = "residual"

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.body, tuple) or not self.body:
            raise ValueError(f"Residual needs a body of one or more layers, got {self.body!r}")
        chain.names(self.body)  # Layers only, unique names
        if self.projection is not None:
            if not isinstance(self.projection, Layer) or chain.has_state(self.projection):
                raise ValueError(
                    f"Residual's projection must be a layer without state (or None: a 1x1 "
                    f"convolution where needed), got {self.projection!r}"
                )

    # ---- shape, params, state
    def skip(self, in_shape) -> Layer | None:
        """The skip path's layer for inputs of `in_shape`: None for x itself."""
        in_shape, out = tuple(in_shape), chain.output_shapes(self.body, in_shape)[-1]
        skip = self.projection
        if skip is None and out != in_shape:
            if len(in_shape) == len(out) == 1:
                skip = Dense(out[0])
            elif len(in_shape) == len(out) == 3:
                strides = (_stride(in_shape[0], out[0]), _stride(in_shape[1], out[1]))
                skip = None if None in strides else Conv(out[2], 1, strides)
            if skip is None:
                raise ValueError(
                    f"Residual's body maps {in_shape} to {out}, which no 1x1 convolution "
                    "matches; pass projection= a layer that does (a Conv with a stride and "
                    "padding of your choice), or keep the body's spatial size"
                )
        if skip is not None:
            if tuple(skip.output_shape(in_shape)) != out:
                raise ValueError(
                    f"Residual's projection {skip!r} maps {in_shape} to "
                    f"{tuple(skip.output_shape(in_shape))}, not to the body's {out}; fix "
                    "projection="
                )
            if chain.has_params(skip) and PROJECTION in chain.names(self.body):
                raise ValueError(f"a Residual's body layer may not be named {PROJECTION!r}")
        return skip

    def has_params(self) -> bool:
        """Always: its params dict holds its body's and its projection's (a projection may be
        needed or not depending on the input shape, so it is not known without one)."""
        return True

    def has_state(self) -> bool:
        """When its body keeps state (BatchNorm's statistics): then that state is the
        residual's, keyed by the body's layer names."""
        return any(chain.has_state(layer) for layer in self.body)

    def init_state(self, in_shape, dtype):
        return chain.init_state(self.body, in_shape, dtype)

    def next_state(self, p, x, ctx: Context):
        body_p, *_ = self._parts(p, x.shape, ctx)
        return chain.apply(body_p, x, self.body, ctx)[1]

    def output_shape(self, in_shape):
        self.skip(in_shape)  # checks that the two paths meet
        return chain.output_shapes(self.body, in_shape)[-1]

    def init(self, key, in_shape, dtype):
        body_key, skip_key = jax.random.split(key)
        params = chain.init(body_key, self.body, in_shape, dtype)
        skip = self.skip(in_shape)
        if skip is not None and chain.has_params(skip):
            params[PROJECTION] = skip.init(skip_key, tuple(in_shape), dtype)
        return params

    # ---- the two paths' params and contexts
    def _parts(self, p, in_shape, ctx: Context):
        """(body params, skip layer, skip params, skip context): the skip's key is the
        residual's folded with len(body), the positions after the body's own."""
        skip = self.skip(in_shape)
        key = None if ctx.key is None else jax.random.fold_in(ctx.key, len(self.body))
        skip_ctx = ctx._replace(key=key, state={})
        if skip is None or not chain.has_params(skip):
            return p, skip, {}, skip_ctx
        body_p = {name: value for name, value in p.items() if name != PROJECTION}
        return body_p, skip, p[PROJECTION], skip_ctx

    # ---- one example
    def apply(self, p, x, ctx: Context):
        body_p, skip, skip_p, skip_ctx = self._parts(p, x.shape, ctx)
        y, _ = chain.apply(body_p, x, self.body, ctx)
        return y + (x if skip is None else skip.apply(skip_p, x, skip_ctx))

    def autodiff_reference(self, p, x, ctx: Context):
        """`apply` with every inner layer's `autodiff_reference`."""
        body_p, skip, skip_p, skip_ctx = self._parts(p, x.shape, ctx)
        y, _ = chain.apply(body_p, x, self.body, ctx, fns=AUTODIFF_REFERENCE)
        return y + (x if skip is None else skip.autodiff_reference(skip_p, x, skip_ctx))

    def vjp(self, p, x, dy, ctx: Context):
        """y = body(x) + skip(x), a sum, so dy reaches both paths whole (d(a + b)/da = 1):
            dx = body_vjp(dy) + skip_vjp(dy),
        where skip_vjp(dy) = dy for the identity (dI/dx = I) and the projection's own rule
        otherwise (a 1x1 conv's: grads.conv2d_vjp). The params of the two paths are disjoint,
        so dparams is the body's (chain.vjp, layer by layer from its last) beside the
        projection's: {"conv1": ..., "projection": {"kernel": dw, "bias": db}}."""
        body_p, skip, skip_p, skip_ctx = self._parts(p, x.shape, ctx)
        dx, dp = chain.vjp(body_p, x, dy, self.body, ctx)
        if skip is None:
            return dx + dy, dp
        dx_skip, dp_skip = skip.vjp(skip_p, x, dy, skip_ctx)
        return dx + dx_skip, ({**dp, PROJECTION: dp_skip} if chain.has_params(skip) else dp)

    def vjp_batch(self, p, x_N, dy_N, ctx: Context):
        """`vjp` on a batch, each body layer by its own `vjp_batch` (a conv's kernel gradient
        as one convolution), on the body's inputs from chain.forward_batch (the forward is run
        again: the protocol hands a layer only its own input)."""
        body_p, skip, skip_p, skip_ctx = self._parts(p, x_N.shape[1:], ctx)
        _, _, inputs = chain.forward_batch(body_p, x_N, self.body, ctx)
        dx_N, dp = chain.vjp_batch(body_p, inputs, dy_N, self.body, ctx)
        if skip is None:
            return dx_N + dy_N, dp
        dx_skip, dp_skip = skip.vjp_batch(skip_p, x_N, dy_N, skip_ctx)
        return dx_N + dx_skip, ({**dp, PROJECTION: dp_skip} if chain.has_params(skip) else dp)

    # ---- Flax
    def linen(self, name):
        module = _linen_residual()(self, name=name)
        return lambda x_NHWC, train: module(x_NHWC, train)

    def nnx(self, in_shape, rngs):
        return _nnx_residual()(self, tuple(in_shape), rngs)

    # ---- gradient checks
    @classmethod
    def gradcheck_cases(cls, rng):
        """Random small bodies: Conv + ReLU keeping the shape (the identity skip); a strided
        Conv (a projection, its stride inferred); a Residual nested in another."""

        def same(c):
            return Conv(c, draw_pair(rng, 1, 3), 1, "SAME")

        def draw_projected():
            x_shape = (*draw_pair(rng, 3, 7), int(rng.integers(1, 4)))
            stride = (int(rng.integers(2, 4)), int(rng.integers(1, 4)))  # forces a projection
            body = [Conv(int(rng.integers(1, 4)), draw_pair(rng, 1, 3), stride)]
            return cls(body), x_shape

        x_shape = (*draw_pair(rng, 2, 6), int(rng.integers(1, 4)))
        projected, p_shape = redraw(draw_projected)
        nested = cls([cls([same(x_shape[2]), ReLU()]), same(x_shape[2]), ReLU()])
        return [
            Case(cls([same(x_shape[2]), ReLU()]), x_shape),
            Case(projected, p_shape),
            Case(nested, x_shape),
        ]


# --------------------------------------------------------------------------- Flax modules
# Built on first use, so that flax loads only for a caller that asks for a Flax module.


@functools.cache
def _linen_residual():
    import flax.linen as nn

    class LinenResidual(nn.Module):
        """A Residual on a batch: its body's submodules (conv1, ...) and `projection` in its
        scope, so its params are the residual's params dict."""

        layer: Residual

        @nn.compact
        def __call__(self, x_NHWC, train):
            y_N = chain.linen_apply(self.layer.body, x_NHWC, train)
            skip = self.layer.skip(x_NHWC.shape[1:])
            if skip is None:
                return y_N + x_NHWC
            if chain.has_params(skip):
                return y_N + skip.linen(PROJECTION)(x_NHWC, train)
            return y_N + skip.flax(x_NHWC, train=train)

    return LinenResidual


@functools.cache
def _nnx_residual():
    from flax import nnx

    class NnxResidual(nnx.Module):
        """A Residual on a batch: its body's modules and `projection` as attributes named as
        in the residual's params dict, so nnx.state(module, nnx.Param) is that dict."""

        def __init__(self, layer: Residual, in_shape, rngs):
            self.residual, self.in_shape = layer, in_shape
            modules = chain.nnx_modules(layer.body, in_shape, rngs)
            skip = layer.skip(in_shape)
            if skip is not None and chain.has_params(skip):
                modules[PROJECTION] = skip.nnx(in_shape, rngs)
            for key, module in modules.items():
                if hasattr(self, key):
                    raise ValueError(f"layer name {key!r} clashes with a Residual attribute")
                setattr(self, key, module)

        def __call__(self, x_NHWC):
            y_N = chain.nnx_apply(self.residual.body, self, x_NHWC)
            skip = self.residual.skip(self.in_shape)
            if skip is None:
                return y_N + x_NHWC
            if chain.has_params(skip):
                return y_N + getattr(self, PROJECTION)(x_NHWC)
            return y_N + skip.flax(x_NHWC, train=False)

    return NnxResidual
