"""Hand-derived backward rules, one layer at a time, each rule beside its derivation. The layer
kinds (cnnjax.layers) call them, and their custom_vjp twins (layers.HAND_DERIVED) make jax.grad
use them; backprop through a whole network spec is `cnnjax.backprop`.

Legend: x_HWC a layer's input (one example), dy_* the gradient of the loss w.r.t. the layer's
output (the "error"), dx_* w.r.t. its input; s = stride, xpad = x with its padding; H' x W' is
the output size. Every rule here is checked against jax.grad and against finite differences
(cnnjax.gradcheck, tests/test_grads.py).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
from jax import lax

from cnnjax import losses, ops

_DIMS = ("NHWC", "HWIO", "NHWC")

# --------------------------------------------------------------------------- window plumbing


def _window_taps(xpad_HWC, window_hw, stride_hw, out_hw):
    """For each window offset (m, n), row-major, the inputs it reads: tap[i, j] = xpad[i*s + m,
    j*s + n]. A pool is then a reduction over the kh*kw taps."""
    taps = []
    for m in range(window_hw[0]):
        for n in range(window_hw[1]):
            limit = (m + (out_hw[0] - 1) * stride_hw[0] + 1, n + (out_hw[1] - 1) * stride_hw[1] + 1)
            taps.append(
                lax.slice(xpad_HWC, (m, n, 0), (*limit, xpad_HWC.shape[2]), (*stride_hw, 1))
            )
    return taps


def _scatter_taps(tap_grads, window_hw, stride_hw, padded_hw):
    """The transpose of `_window_taps`: sum each offset's gradient back onto the input positions
    it read (dxpad[i*s + m, j*s + n] += g_mn[i, j]); overlapping windows accumulate."""
    dxpad, k = 0.0, 0
    for m in range(window_hw[0]):
        for n in range(window_hw[1]):
            g = tap_grads[k]
            k += 1
            config = [
                (off, size - off - (out - 1) * s - 1, s - 1)  # (low, high, interior) zeros
                for off, size, out, s in zip((m, n), padded_hw, g.shape[:2], stride_hw, strict=True)
            ]
            dxpad = dxpad + lax.pad(g, jnp.zeros((), g.dtype), (*config, (0, 0, 0)))
    return dxpad


def _crop(dxpad_HWC, pads, in_hw):
    """Drop the gradient that fell on padding: it belongs to no input."""
    (top, _), (left, _) = pads
    return dxpad_HWC[top : top + in_hw[0], left : left + in_hw[1]]


def _check_error(dy, expected_shape, layer: str):
    """The error must have the shape of the layer's output (as jax.vjp insists too)."""
    if tuple(jnp.shape(dy)) != tuple(expected_shape):
        raise ValueError(
            f"dy must have the {layer} output's shape {tuple(expected_shape)}, "
            f"got {tuple(jnp.shape(dy))}"
        )


def _pool_geometry(x_HWC, dy_HWC, window, stride, padding):
    out_shape = ops.pool_shape(x_HWC.shape, window, stride, padding)
    _check_error(dy_HWC, out_shape, "pool")
    window_hw = ops.as_pair(window, "window")
    stride_hw = window_hw if stride is None else ops.as_pair(stride, "stride")
    pads = ops.explicit_padding(x_HWC.shape[:2], window_hw, stride_hw, padding)
    return window_hw, stride_hw, pads, out_shape


# --------------------------------------------------------------------------- layer rules


def relu_vjp(x, dy):
    """y = max(x, 0), so dy/dx = 1 where x > 0 and 0 where x <= 0 (0 at the kink, as jax.grad of
    ops.relu): dx = dy * [x > 0]."""
    _check_error(dy, jnp.shape(x), "relu")
    return jnp.where(x > 0, dy, jnp.zeros_like(dy))


def dense_vjp(x_I, w_IO, dy_O):
    """y_o = sum_i x_i w_io + b_o, so

        dL/dx_i = sum_o w_io dy_o  (dx = w dy),  dL/dw_io = x_i dy_o  (an outer product),
        dL/db_o = dy_o.

    Returns (dx_I, dw_IO, db_O)."""
    _check_error(dy_O, w_IO.shape[1:], "dense")
    return w_IO @ dy_O, jnp.outer(x_I, dy_O), dy_O


def flatten_vjp(x_HWC, dy_F):
    """Flatten only renumbers: flat index f = h*W*C + w*C + c, so dx[h, w, c] = dy[f]."""
    _check_error(dy_F, (x_HWC.size,), "flatten")
    return jnp.reshape(dy_F, x_HWC.shape)


def cross_entropy_vjp(logits_K, labels, *, label_smoothing=0.0):
    """L = -sum_k q_k log p_k with p = softmax(z). Since d log p_k / dz_j = [k = j] - p_j,

        dL/dz_j = -q_j + p_j sum_k q_k = p_j - q_j     (the target q sums to 1).

    Args as `losses.cross_entropy` (q: one-hot, soft, or smoothed). Returns dL/dz, per example."""
    target = losses.target_distribution(logits_K, labels, label_smoothing)
    return losses.softmax(logits_K) - target


def conv2d_vjp(x_HWC, w_HWIO, dy_HWO, *, stride=1, padding="VALID"):
    """y[i, j, o] = sum_{m, n, c} xpad[i*s + m, j*s + n, c] w[m, n, c, o] + b[o]. Then

    dL/db[o] = sum_{i, j} dy[i, j, o].

    dL/dw[m, n, c, o] = sum_{i, j} xpad[i*s + m, j*s + n, c] dy[i, j, o]: the input correlated
    with the error, the error dilated by the stride (s - 1 zeros between its entries).

    dL/dxpad[p, q, c] = sum over (i, m) with i*s + m = p (likewise q) of dy[i, j, o] w[m, n, c, o]
    = sum_{m, n, o} dyd[p - m, q - n, o] w[m, n, c, o] with dyd the stride-dilated error: a full
    convolution of dyd with the kernel, i.e. dyd padded by k - 1 on each side and correlated with
    the kernel flipped in space and transposed (I <-> O). Rows that no window reached (a VALID
    stride that does not divide) get zero; then the padding is cropped off.

    Returns (dx_HWC, dw_HWIO, db_O)."""
    out_shape = ops.conv2d_shape(x_HWC.shape, w_HWIO.shape, stride=stride, padding=padding)
    _check_error(dy_HWO, out_shape, "conv2d")
    (kh, kw), stride_hw = w_HWIO.shape[:2], ops.as_pair(stride, "stride")
    pads = ops.explicit_padding(x_HWC.shape[:2], (kh, kw), stride_hw, padding)
    (ho, wo), (sh, sw) = dy_HWO.shape[:2], stride_hw
    used_h, used_w = (ho - 1) * sh + kh, (wo - 1) * sw + kw  # xpad rows/cols some window reads
    xpad = jnp.pad(x_HWC, (*pads, (0, 0)))

    db_O = jnp.sum(dy_HWO, axis=(0, 1))

    # Input channels play the batch, the error plays the kernel (dilated by the stride).
    dw_HWIO = lax.conv_general_dilated(
        xpad[:used_h, :used_w, :, None],
        dy_HWO[:, :, None, :],
        window_strides=(1, 1),
        padding="VALID",
        rhs_dilation=stride_hw,
        dimension_numbers=("HWNC", "HWIO", "HWNC"),
    )

    # The full convolution: the error dilated by the stride (lhs_dilation puts s - 1 zeros
    # between its entries) and padded by k - 1, plus the rows no window reached, correlated with
    # the flipped, transposed kernel. Letting the convolution pad and dilate, rather than
    # padding the error first, measured ~2x faster on XLA:CPU.
    extra_h, extra_w = xpad.shape[0] - used_h, xpad.shape[1] - used_w
    w_flipped_HWOI = jnp.flip(w_HWIO, axis=(0, 1)).transpose(0, 1, 3, 2)
    dxpad = lax.conv_general_dilated(
        dy_HWO[None],
        w_flipped_HWOI,
        window_strides=(1, 1),
        padding=((kh - 1, kh - 1 + extra_h), (kw - 1, kw - 1 + extra_w)),
        lhs_dilation=stride_hw,
        dimension_numbers=_DIMS,
    )[0]
    return _crop(dxpad, pads, x_HWC.shape[:2]), dw_HWIO, db_O


def max_pool_vjp(x_HWC, dy_HWC, *, window, stride=None, padding="VALID"):
    """y[i, j, c] = max_{m, n} xpad[i*s + m, j*s + n, c]: dy/dx is 1 at the window's arg-max and
    0 elsewhere, so each output's error goes to its arg-max; overlapping windows accumulate;
    inputs no window reaches (an odd last row) get 0.

    Ties: the first arg-max in row-major window order takes the whole error, the others 0. This is
    jax.grad's policy (XLA's select-and-scatter with a >= selector), and ties are common: ReLU
    makes plateaus of zeros. Padding is -inf, so it is never the arg-max.

    Windows that tile the input (stride = window, no padding: the usual 2x2 pool) take
    `max_pool_vjp_tiled`; any other geometry takes `max_pool_vjp_taps`. The two are tested equal,
    ties included."""
    window_hw, stride_hw, pads, _ = _pool_geometry(x_HWC, dy_HWC, window, stride, padding)
    if stride_hw == window_hw and pads == ((0, 0), (0, 0)):
        return max_pool_vjp_tiled(x_HWC, dy_HWC, window_hw)
    return max_pool_vjp_taps(x_HWC, dy_HWC, window=window, stride=stride, padding=padding)


def max_pool_vjp_taps(x_HWC, dy_HWC, *, window, stride=None, padding="VALID"):
    """max_pool_vjp for any geometry: each window offset's tap wins where it holds the max and no
    earlier tap did, and the winners' errors are scattered back onto the inputs they read."""
    window_hw, stride_hw, pads, out_shape = _pool_geometry(x_HWC, dy_HWC, window, stride, padding)
    xpad = jnp.pad(x_HWC, (*pads, (0, 0)), constant_values=-jnp.inf)
    taps = _window_taps(xpad, window_hw, stride_hw, out_shape[:2])
    y = functools.reduce(jnp.maximum, taps)
    taken = jnp.zeros(y.shape, bool)
    tap_grads = []
    for tap in taps:  # row-major order: the first tap that holds the max wins
        winner = (tap == y) & ~taken
        taken = taken | winner
        tap_grads.append(jnp.where(winner, dy_HWC, jnp.zeros_like(dy_HWC)))
    dxpad = _scatter_taps(tap_grads, window_hw, stride_hw, xpad.shape[:2])
    return _crop(dxpad, pads, x_HWC.shape[:2])


def max_pool_vjp_tiled(x_HWC, dy_HWC, window_hw):
    """max_pool_vjp for windows that tile the input (stride = window, no padding; rows and
    columns past the last whole window get 0). Each window's first arg-max k (row-major) is
    found once; then dx[i*kh + m, j*kw + n] = dy[i, j] where k = m*kw + n, else 0, written on an
    (H', kh, W', kw) view of the input. The same rule as max_pool_vjp_taps, whose scatter
    XLA:CPU compiles into a loop that redoes each window's comparisons for every input it
    reads: in the reference CNN's training step (batch 128) the first pool's backward took
    0.95 ms this way and 2.3 ms that way."""
    (kh, kw), (ho, wo) = window_hw, dy_HWC.shape[:2]
    taps = _window_taps(x_HWC, window_hw, window_hw, (ho, wo))
    y = functools.reduce(jnp.maximum, taps)
    first = jnp.full(y.shape, kh * kw, jnp.int32)  # kh*kw: no winner (a NaN window), as taps
    for k in reversed(range(kh * kw)):  # the lowest k that holds the max is written last
        first = jnp.where(taps[k] == y, k, first)
    k_of_mn = jnp.arange(kh * kw, dtype=jnp.int32).reshape(1, kh, 1, kw, 1)
    dx = jnp.where(first[:, None, :, None] == k_of_mn, dy_HWC[:, None, :, None], 0.0)
    dx = dx.reshape(ho * kh, wo * kw, dy_HWC.shape[2])
    (h, w) = x_HWC.shape[:2]
    return jnp.pad(dx, ((0, h - ho * kh), (0, w - wo * kw), (0, 0)))


def avg_pool_vjp(x_HWC, dy_HWC, *, window, stride=None, padding="VALID", count_include_pad=True):
    """y[i, j, c] = (1 / d_ij) sum_{m, n} xpad[i*s + m, j*s + n, c], with d the window size (or
    the count of real inputs in the window): each input of the window gets dy / d."""
    window_hw, stride_hw, pads, _ = _pool_geometry(x_HWC, dy_HWC, window, stride, padding)
    divisor = ops.pool_divisor(
        x_HWC.shape, dy_HWC.dtype, window_hw, stride_hw, pads, count_include_pad
    )
    share = dy_HWC / divisor
    padded_hw = tuple(s + lo + hi for s, (lo, hi) in zip(x_HWC.shape[:2], pads, strict=True))
    dxpad = _scatter_taps([share] * (window_hw[0] * window_hw[1]), window_hw, stride_hw, padded_hw)
    return _crop(dxpad, pads, x_HWC.shape[:2])


def conv2d_kernel_grad_batch(x_NHWC, dy_NHWO, kernel_hw, *, stride=1, padding="VALID"):
    """dL/dw of a batch: sum over n of conv2d_vjp's dw, i.e.

        dL/dw[m, q, c, o] = sum_{n, i, j} xpad[n, i*s + m, j*s + q, c] dy[n, i, j, o]

    computed as ONE convolution in which the examples are the contracted "input features"
    (x read as C x H x W x N, the error as N x H' x W' x O, dilated by the stride). Vmapping
    conv2d_vjp instead gives a convolution per example (a grouped convolution, several times
    slower on XLA:CPU) and then sums them.

    A 1x1 kernel (a residual's projection) reads one input per output, xpad[n, i*s, j*s, c], so
    its gradient is one matrix product contracting n, i, j: the convolution would first
    transpose x to C x H x W x N, which measured 3x the product's time (XLA:CPU, batch 128)."""
    (kh, kw), stride_hw = kernel_hw, ops.as_pair(stride, "stride")
    pads = ops.explicit_padding(x_NHWC.shape[1:3], (kh, kw), stride_hw, padding)
    ho, wo = dy_NHWO.shape[1:3]
    used_h, used_w = (ho - 1) * stride_hw[0] + kh, (wo - 1) * stride_hw[1] + kw
    xpad = jnp.pad(x_NHWC, ((0, 0), *pads, (0, 0)))[:, :used_h, :used_w]
    if (kh, kw) == (1, 1):
        x_read = xpad[:, :: stride_hw[0], :: stride_hw[1]]  # the inputs the windows read
        return jnp.einsum("nijc,nijo->co", x_read, dy_NHWO)[None, None]
    return lax.conv_general_dilated(
        xpad,
        dy_NHWO,
        window_strides=(1, 1),
        padding="VALID",
        rhs_dilation=stride_hw,
        dimension_numbers=("CHWN", "IHWO", "HWNC"),
    )
