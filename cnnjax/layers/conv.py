"""Conv: a 2-D convolution (ops.conv2d) with its hand-derived rule (grads.conv2d_vjp)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from cnnjax import grads, ops
from cnnjax.layers.base import Case, Context, Layer, draw_padding, draw_pair, redraw, register


@register
@dataclasses.dataclass(frozen=True)
class Conv(Layer):
    """features output channels from a kernel_size window; params {"kernel": w_HWIO,
    "bias": b_O}, kernels LeCun-normal (variance 1 / fan_in, Flax's default), biases zero.
    use_bias=False: no bias (before a BatchNorm, which subtracts any per-channel constant, so a
    bias there would have a gradient of exactly zero and do nothing)."""

    features: int
    kernel_size: int | ops.Pair = 3
    stride: int | ops.Pair = 1
    padding: ops.Padding = "VALID"
    use_bias: bool = True
    prefix = "conv"

    def kernel_shape(self, in_shape) -> tuple[int, int, int, int]:
        return (*ops.as_pair(self.kernel_size, "kernel_size"), in_shape[-1], self.features)

    def output_shape(self, in_shape):
        return ops.conv2d_shape(
            in_shape, self.kernel_shape(in_shape), stride=self.stride, padding=self.padding
        )

    def init(self, key, in_shape, dtype):
        kernel = jax.nn.initializers.lecun_normal()(key, self.kernel_shape(in_shape), dtype)
        bias = {"bias": jnp.zeros((self.features,), dtype)} if self.use_bias else {}
        return {"kernel": kernel, **bias}

    def apply(self, p, x_HWC, ctx: Context):
        conv = dict(stride=self.stride, padding=self.padding)
        return ops.conv2d(x_HWC, p["kernel"], p.get("bias"), **conv)

    def vjp(self, p, x_HWC, dy_HWO, ctx: Context):
        dx, dw, db = grads.conv2d_vjp(
            x_HWC, p["kernel"], dy_HWO, stride=self.stride, padding=self.padding
        )
        return dx, {"kernel": dw, "bias": db} if self.use_bias else {"kernel": dw}

    def vjp_batch(self, p, x_N, dy_N, ctx: Context):
        """dx per example (vmapped conv2d_vjp); the kernel gradient of the whole batch as one
        convolution (grads.conv2d_kernel_grad_batch), the bias gradient one sum."""
        conv = dict(stride=self.stride, padding=self.padding)
        dx = jax.vmap(lambda x, dy: grads.conv2d_vjp(x, p["kernel"], dy, **conv)[0])(x_N, dy_N)
        dw = grads.conv2d_kernel_grad_batch(x_N, dy_N, p["kernel"].shape[:2], **conv)
        if not self.use_bias:
            return dx, {"kernel": dw}
        return dx, {"kernel": dw, "bias": jnp.sum(dy_N, axis=(0, 1, 2))}

    def linen(self, name):
        import flax.linen as nn

        # an int kernel_size means a 1-D kernel to linen, so it is always a pair here
        kernel_hw = ops.as_pair(self.kernel_size, "kernel_size")
        stride_hw = ops.as_pair(self.stride, "stride")
        conv = nn.Conv(
            self.features, kernel_hw, stride_hw, self.padding, use_bias=self.use_bias, name=name
        )
        return lambda x_NHWC, train: conv(x_NHWC)

    def nnx(self, in_shape, rngs):
        from flax import nnx

        kernel_hw = ops.as_pair(self.kernel_size, "kernel_size")
        stride_hw = ops.as_pair(self.stride, "stride")
        return nnx.Conv(
            in_shape[-1],
            self.features,
            kernel_hw,
            stride_hw,
            padding=self.padding,
            use_bias=self.use_bias,
            rngs=rngs,
        )

    @classmethod
    def gradcheck_cases(cls, rng):
        """x 3-8 px, 1-3 channels, kernel 1-4, 1-3 features, stride 1-3, any padding."""

        def draw():
            x_shape = (*draw_pair(rng, 3, 8), int(rng.integers(1, 4)))
            kernel, stride = draw_pair(rng, 1, 4), draw_pair(rng, 1, 3)
            bias = bool(rng.integers(4))  # a quarter without
            return cls(int(rng.integers(1, 4)), kernel, stride, draw_padding(rng), bias), x_shape

        layer, x_shape = redraw(draw)
        return [Case(layer, x_shape)]
