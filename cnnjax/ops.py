"""Pure single-example layer math on jax.lax, and the shape rules that go with it.

Legend: x_HWC one input example (height, width, channels); w_HWIO a conv kernel (height, width,
in-channels, out-channels), the layout Flax uses; b_O a bias; y_HWO an output; x_I / w_IO a dense
layer's input and kernel. Batches come from `jax.vmap` over these functions.

Precision: convolutions and dots take JAX's default matmul precision, the backend's fast one
(float32 on CPUs; on recent NVIDIA GPUs TF32, about 1e-3 relative; on TPUs bfloat16 passes).
Checks that compare float32 results to 1e-4 need true float32 arithmetic: they run inside
`highest_precision()`, which makes every dot and convolution traced within it HIGHEST.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Pair = tuple[int, int]
Padding = str | tuple[Pair, Pair]

_DIMS = ("NHWC", "HWIO", "NHWC")  # one example is lifted to a batch of one for lax
CHECK_PRECISION = "highest"  # the gradient checks' and the Flax parity's matmul precision


def highest_precision():
    """A context in which every dot and convolution JAX traces runs at full float32 (or float64)
    precision on any backend: jax.default_matmul_precision(CHECK_PRECISION)."""
    return jax.default_matmul_precision(CHECK_PRECISION)


# --------------------------------------------------------------------------- shape rules


def as_pair(value, name: str) -> Pair:
    """An int or a pair of ints >= 1 (a stride or a window) as a pair."""
    try:
        pair = (value, value) if isinstance(value, int) else tuple(value)
    except TypeError:  # e.g. a float: not iterable, reported below with the argument's name
        pair = ()
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return pair


def explicit_padding(in_hw: Pair, window_hw: Pair, stride_hw: Pair, padding: Padding):
    """Resolve "VALID", "SAME" or ((top, bottom), (left, right)) to explicit pairs.

    "SAME" follows lax and Flax: the output has ceil(in / stride) rows, and the total padding
    that needs is split with the odd row at the bottom (right).
    """
    if isinstance(padding, str):
        if padding == "VALID":
            return ((0, 0), (0, 0))
        if padding == "SAME":
            pads = []
            for size, window, stride in zip(in_hw, window_hw, stride_hw, strict=True):
                out = -(-size // stride)
                total = max((out - 1) * stride + window - size, 0)
                pads.append((total // 2, total - total // 2))
            return tuple(pads)
        raise ValueError(
            f"padding must be 'VALID', 'SAME' or ((top, bottom), (left, right)), got {padding!r}"
        )
    try:
        pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    except (TypeError, ValueError):
        pads = ()
    if len(pads) != 2:
        raise ValueError(
            f"padding must be 'VALID', 'SAME' or ((top, bottom), (left, right)), got {padding!r}"
        )
    if min(min(p) for p in pads) < 0:
        raise ValueError(f"padding must be >= 0 on every side, got {padding!r}")
    return pads


def window_output_hw(in_hw: Pair, window_hw: Pair, stride_hw: Pair, pads, what: str) -> Pair:
    """Output rows/cols of a sliding window: floor((in + pad - window) / stride) + 1."""
    out = []
    for size, window, stride, (lo, hi) in zip(in_hw, window_hw, stride_hw, pads, strict=True):
        padded = size + lo + hi
        if window > padded:
            raise ValueError(
                f"{what} {tuple(window_hw)} is larger than the padded input "
                f"{tuple(s + a + b for s, (a, b) in zip(in_hw, pads, strict=True))}; "
                "use a smaller window or more padding"
            )
        out.append((padded - window) // stride + 1)
    return tuple(out)


def _check_rank(x, rank: int, name: str, layout: str):
    if getattr(x, "ndim", None) != rank:
        shape = getattr(x, "shape", type(x).__name__)
        raise ValueError(
            f"{name} must have rank {rank} ({layout}, one example; vmap for a batch), "
            f"got shape {shape}"
        )


def _check_dtypes(op: str, x, w, b):
    """lax convolves and multiplies arrays of one dtype; a mismatch (e.g. uint8 pixels and a
    float32 kernel) is refused here, with the cast that fixes it, rather than promoted."""
    given = {"x": x.dtype, "kernel": w.dtype} | ({} if b is None else {"bias": b.dtype})
    if len(set(given.values())) == 1:
        return
    fix = f"cast x: x.astype(jnp.{w.dtype})"
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        fix = f"integer pixels 0..255 become floats by x.astype(jnp.{w.dtype}) / 255"
    names = ", ".join(f"{name} {dtype}" for name, dtype in given.items())
    raise ValueError(f"{op} takes x, kernel and bias of one dtype, got {names}; {fix}")


def conv2d_shape(x_shape, w_shape, *, stride=1, padding: Padding = "VALID"):
    """Output shape (H', W', O) of `conv2d`, with every argument checked."""
    if len(x_shape) != 3:
        raise ValueError(f"x must have rank 3 (H, W, C), got shape {tuple(x_shape)}")
    if len(w_shape) != 4:
        raise ValueError(f"kernel must have rank 4 (H, W, I, O), got shape {tuple(w_shape)}")
    if x_shape[2] != w_shape[2]:
        raise ValueError(
            f"x has {x_shape[2]} channels (shape {tuple(x_shape)}) but the kernel expects "
            f"{w_shape[2]} input channels (shape {tuple(w_shape)}, HWIO)"
        )
    stride_hw = as_pair(stride, "stride")
    pads = explicit_padding(x_shape[:2], w_shape[:2], stride_hw, padding)
    hw = window_output_hw(x_shape[:2], w_shape[:2], stride_hw, pads, "kernel")
    return (*hw, w_shape[3])


def pool_shape(x_shape, window, stride=None, padding: Padding = "VALID"):
    """Output shape (H', W', C) of `max_pool` / `avg_pool`, with every argument checked."""
    if len(x_shape) != 3:
        raise ValueError(f"x must have rank 3 (H, W, C), got shape {tuple(x_shape)}")
    window_hw = as_pair(window, "window")
    stride_hw = window_hw if stride is None else as_pair(stride, "stride")
    pads = explicit_padding(x_shape[:2], window_hw, stride_hw, padding)
    if any(p >= w for pad, w in zip(pads, window_hw, strict=True) for p in pad):
        raise ValueError(
            f"pool padding {pads} must be smaller than the window {window_hw} on every side "
            "(otherwise a window can hold only padding)"
        )
    return (*window_output_hw(x_shape[:2], window_hw, stride_hw, pads, "window"), x_shape[2])


# --------------------------------------------------------------------------- layers


def conv2d(x_HWC, w_HWIO, b_O=None, *, stride=1, padding: Padding = "VALID"):
    """2-D cross-correlation (what deep learning calls convolution) of one example.

        y[i, j, o] = sum_{m, n, c} xpad[i*s + m, j*s + n, c] * w[m, n, c, o] + b[o]

    Args:
      x_HWC: input, shape (H, W, C).
      w_HWIO: kernel, shape (kh, kw, C, O).
      b_O: optional bias, shape (O,).
      stride: int or (sh, sw), >= 1.
      padding: "VALID", "SAME" or ((top, bottom), (left, right)) zeros.
    Returns:
      y_HWO, shape (H', W', O) with H' = floor((H + top + bottom - kh) / sh) + 1.
    """
    _check_rank(x_HWC, 3, "x", "H, W, C")
    _check_rank(w_HWIO, 4, "kernel", "H, W, I, O")
    _check_dtypes("conv2d", x_HWC, w_HWIO, b_O)
    conv2d_shape(x_HWC.shape, w_HWIO.shape, stride=stride, padding=padding)
    stride_hw = as_pair(stride, "stride")
    pads = explicit_padding(x_HWC.shape[:2], w_HWIO.shape[:2], stride_hw, padding)
    y_1HWO = lax.conv_general_dilated(
        x_HWC[None], w_HWIO, window_strides=stride_hw, padding=pads, dimension_numbers=_DIMS
    )
    y_HWO = y_1HWO[0]
    if b_O is not None:
        if b_O.shape != (w_HWIO.shape[3],):
            raise ValueError(f"bias must have shape ({w_HWIO.shape[3]},), got {b_O.shape}")
        y_HWO = y_HWO + b_O
    return y_HWO


def _pool_args(x_HWC, window, stride, padding):
    _check_rank(x_HWC, 3, "x", "H, W, C")
    pool_shape(x_HWC.shape, window, stride, padding)
    window_hw = as_pair(window, "window")
    stride_hw = window_hw if stride is None else as_pair(stride, "stride")
    pads = explicit_padding(x_HWC.shape[:2], window_hw, stride_hw, padding)
    return window_hw, stride_hw, pads


def max_pool(x_HWC, window, stride=None, padding: Padding = "VALID"):
    """Max over each window, per channel: y[i, j, c] = max_{m, n} xpad[i*s + m, j*s + n, c].

    Padding is -inf (an integer dtype's minimum), so it never wins. `stride` defaults to
    `window` (non-overlapping windows). The output has x's dtype; a window holding a NaN gives
    NaN.

    jax.grad sends each output's error to its window's first arg-max in row-major order, the
    policy of the hand-derived rule (grads.max_pool_vjp) and of `max_pool_reduce_window`. Windows
    that tile the input (stride = window, no padding: the usual 2x2 pool) take
    `max_pool_tiled`, whose gradient XLA compiles to selects; any other geometry
    `max_pool_reduce_window`. The forms are tested equal, values and gradients, ties included.
    """
    window_hw, stride_hw, pads = _pool_args(x_HWC, window, stride, padding)
    if stride_hw == window_hw and pads == ((0, 0), (0, 0)):
        return max_pool_tiled(x_HWC, window_hw)
    return max_pool_reduce_window(x_HWC, window, stride, padding)


def max_pool_reduce_window(x_HWC, window, stride=None, padding: Padding = "VALID"):
    """`max_pool` as one lax.reduce_window, for any geometry: the plain formulation. Its jax.grad
    is XLA's select-and-scatter (the first arg-max takes the error), which XLA:CPU lowers to
    index tensors and a scatter: in the reference CNN's jax.grad step (batch 128) that made the
    whole step ~2x slower than with `max_pool_tiled`. The gradient checks differentiate this
    form as their reference (layers.MaxPool.autodiff_reference); forward only, XLA:CPU fuses it
    into a faster kernel than the selects (layers.MaxPool evaluates with it)."""
    window_hw, stride_hw, pads = _pool_args(x_HWC, window, stride, padding)
    floor = -jnp.inf  # a Python scalar: lax recognises max-with-identity and differentiates it
    if not jnp.issubdtype(x_HWC.dtype, jnp.inexact):
        floor = np.array(jnp.iinfo(x_HWC.dtype).min, x_HWC.dtype)
    return lax.reduce_window(
        x_HWC, floor, lax.max, (*window_hw, 1), (*stride_hw, 1), (*pads, (0, 0))
    )


def max_pool_tiled(x_HWC, window_hw: Pair):
    """`max_pool` for windows that tile the input (stride = window, no padding; rows and columns
    past the last whole window are dropped). On an (H', kh, W', kw, C) view of x, each window
    offset (m, n) in row-major order replaces the running max only where it is strictly
    greater (or NaN, which then stays): so the first arg-max is what the output selects, and
    jax.grad of the selects hands it the error. Where a window holds a NaN the error goes to
    its last NaN (jax.grad of reduce_window and the hand rule each do otherwise: a NaN loss has
    no gradient to trust)."""
    (kh, kw), (h, w, c) = window_hw, x_HWC.shape
    ho, wo = h // kh, w // kw
    x_HkWkC = x_HWC[: ho * kh, : wo * kw].reshape(ho, kh, wo, kw, c)
    y_HWC = x_HkWkC[:, 0, :, 0]
    for m in range(kh):
        for n in range(kw):
            if (m, n) != (0, 0):
                tap = x_HkWkC[:, m, :, n]
                y_HWC = jnp.where((tap > y_HWC) | (tap != tap), tap, y_HWC)
    return y_HWC


def avg_pool(x_HWC, window, stride=None, padding: Padding = "VALID", *, count_include_pad=True):
    """Mean over each window, per channel. Padding counts as zeros in the mean unless
    `count_include_pad=False`, which divides by the number of real inputs (as Flax does).

    The output has x's dtype if x is a float. An integer x is averaged in JAX's default float
    dtype (float32; float64 with x64), as jnp.mean does: summed in x's own dtype, four uint8
    200s would wrap around (800 mod 256 = 32).
    """
    window_hw, stride_hw, pads = _pool_args(x_HWC, window, stride, padding)
    if not jnp.issubdtype(x_HWC.dtype, jnp.inexact):
        x_HWC = x_HWC.astype(jnp.result_type(float))
    divisor = pool_divisor(x_HWC.shape, x_HWC.dtype, window_hw, stride_hw, pads, count_include_pad)
    return window_sum(x_HWC, window_hw, stride_hw, pads) / divisor


def window_sum(x_HWC, window_hw: Pair, stride_hw: Pair, pads):
    """Sum over each window (zero padding): avg_pool's numerator."""
    return lax.reduce_window(x_HWC, 0.0, lax.add, (*window_hw, 1), (*stride_hw, 1), (*pads, (0, 0)))


def pool_divisor(x_shape, dtype, window_hw: Pair, stride_hw: Pair, pads, count_include_pad: bool):
    """avg_pool's denominator in `dtype`: the window size, or per window the count of real
    inputs (small integers, exact in any float dtype)."""
    if count_include_pad or pads == ((0, 0), (0, 0)):
        return jnp.asarray(window_hw[0] * window_hw[1], dtype)
    ones_HW1 = jnp.ones((*x_shape[:2], 1), dtype)
    return window_sum(ones_HW1, window_hw, stride_hw, pads)


def relu(x):
    """max(x, 0), with derivative 0 at the kink. jax.nn.relu is jnp.maximum(x, 0) with that
    derivative fixed (jnp.maximum's own splits the tie and gives 1/2 at 0). The select
    jnp.where(x > 0, x, 0) computes the same values, but XLA:CPU does not fuse it with the
    bias add before it: the reference CNN's forward pass measured 2.2x slower at batch 128 and
    4.5x at batch 1000."""
    return jax.nn.relu(x)


def dense(x_I, w_IO, b_O=None):
    """Fully connected layer: y[o] = sum_i x[i] * w[i, o] + b[o]."""
    _check_rank(x_I, 1, "x", "I")
    _check_rank(w_IO, 2, "kernel", "I, O")
    _check_dtypes("dense", x_I, w_IO, b_O)
    if x_I.shape[0] != w_IO.shape[0]:
        raise ValueError(
            f"x has {x_I.shape[0]} features (shape {x_I.shape}) but the kernel expects "
            f"{w_IO.shape[0]} (shape {w_IO.shape}, IO)"
        )
    y_O = x_I @ w_IO
    if b_O is not None:
        if b_O.shape != (w_IO.shape[1],):
            raise ValueError(f"bias must have shape ({w_IO.shape[1]},), got {b_O.shape}")
        y_O = y_O + b_O
    return y_O


def flatten(x_HWC):
    """Row-major flatten of one example: flat index h*W*C + w*C + c."""
    return jnp.reshape(x_HWC, (-1,))
