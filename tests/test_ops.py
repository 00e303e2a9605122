"""cnnjax.ops: worked examples, an explicit-loop reference, shape rules, jit/vmap, every error."""

from __future__ import annotations

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax import lax

from cnnjax import ops

# float64 sums of at most 4*4*3 = 48 products of numbers in [-1, 1]: rounding is ~1e-15.
F64_TOL = 1e-12
# float32 rounding of each of the kh*kw*C products (|x|, |w| <= 1) and of the running sum adds
# at most a few eps (1.2e-7) per term, so a conv's error bound grows with kh*kw*C.
F32_ATOL_PER_TERM = 4 * float(np.finfo(np.float32).eps)
# jit may fuse ops differently from op-by-op dispatch: the same math, float32 rounding only.
JIT_RTOL = 1e-6

# The seed's 5x5 image: a bright vertical bar in columns 2-3 of rows 0-3.
SEED_IMAGE = np.array(
    [
        [0, 0, 255, 255, 0],
        [0, 0, 255, 255, 0],
        [0, 0, 255, 255, 0],
        [0, 0, 255, 255, 0],
        [0, 0, 0, 0, 0],
    ],
    np.float32,
)
VERTICAL_EDGE = np.array([[-1, 0, 1], [-1, 0, 1], [-1, 0, 1]], np.float32)


# --------------------------------------------------------------------------- references


def conv_reference(x, w, b, stride, pads):
    """y[i, j, o] = sum_{m, n, c} xpad[i*sh + m, j*sw + n, c] * w[m, n, c, o] + b[o], by loops."""
    (top, bottom), (left, right) = pads
    sh, sw = stride
    H, W, C = x.shape
    kh, kw, _, O = w.shape
    xpad = np.zeros((H + top + bottom, W + left + right, C))
    xpad[top : top + H, left : left + W] = x
    out_h = (H + top + bottom - kh) // sh + 1
    out_w = (W + left + right - kw) // sw + 1
    y = np.zeros((out_h, out_w, O))
    for i in range(out_h):
        for j in range(out_w):
            for o in range(O):
                total = 0.0 if b is None else float(b[o])
                for m in range(kh):
                    for n in range(kw):
                        for c in range(C):
                            total += xpad[i * sh + m, j * sw + n, c] * w[m, n, c, o]
                y[i, j, o] = total
    return y


def pool_reference(x, window, stride, pads, kind, count_include_pad=True):
    """Max or mean over each window of the real (unpadded) inputs, by loops."""
    (top, bottom), (left, right) = pads
    kh, kw = window
    sh, sw = stride
    H, W, C = x.shape
    out_h = (H + top + bottom - kh) // sh + 1
    out_w = (W + left + right - kw) // sw + 1
    y = np.zeros((out_h, out_w, C))
    for i in range(out_h):
        for j in range(out_w):
            rows = [r - top for r in range(i * sh, i * sh + kh) if 0 <= r - top < H]
            cols = [c - left for c in range(j * sw, j * sw + kw) if 0 <= c - left < W]
            patch = x[np.ix_(rows, cols)].reshape(-1, C)
            if kind == "max":
                y[i, j] = patch.max(axis=0)
            else:
                count = kh * kw if count_include_pad else len(rows) * len(cols)
                y[i, j] = patch.sum(axis=0) / count
    return y


def lax_same_pads(in_hw, window_hw, stride_hw):
    """lax's own resolution of "SAME", independent of cnnjax.ops.explicit_padding."""
    return tuple(tuple(p) for p in lax.padtype_to_pads(in_hw, window_hw, stride_hw, "SAME"))


def random_array(seed, shape):
    return np.random.default_rng(seed).uniform(-1.0, 1.0, shape)


# --------------------------------------------------------------------------- strictness


def test_strict_dtype_promotion_is_active_in_tests():
    # conftest's autouse fixture: a silent float32 + float64 mix must raise here.
    with jax.enable_x64(True), pytest.raises(jax.dtypes.TypePromotionError, match="strict"):
        jnp.ones(2, jnp.float32) + jnp.ones(2, jnp.float64)


# --------------------------------------------------------------------------- conv2d by hand


def test_conv_seed_single_patch_is_765():
    dark_to_bright = np.array([[0, 0, 255]] * 3, np.float32)[..., None]
    y = ops.conv2d(dark_to_bright, VERTICAL_EDGE[..., None, None])
    assert y.shape == (1, 1, 1)
    assert float(y[0, 0, 0]) == 765.0
    # The mirrored edge (bright to dark) is the same size with the opposite sign.
    bright_to_dark = dark_to_bright[:, ::-1]
    assert float(ops.conv2d(bright_to_dark, VERTICAL_EDGE[..., None, None])[0, 0, 0]) == -765.0


def test_conv_seed_vertical_edge_example():
    # The seed prints [[765, 765, 0], [765, 765, 0], [510, 510, 0]]; its third column is wrong.
    # That window covers columns 2-4, i.e. bright-to-dark (255 -> 0): -255 per lit row, so the
    # true values are -765, -765, -510. The seed's zeros are what ReLU makes of them.
    y = ops.conv2d(SEED_IMAGE[..., None], VERTICAL_EDGE[..., None, None])
    expected = np.array([[765, 765, -765], [765, 765, -765], [510, 510, -510]], np.float32)
    np.testing.assert_array_equal(np.asarray(y[..., 0]), expected)
    relu_expected = np.array([[765, 765, 0], [765, 765, 0], [510, 510, 0]], np.float32)
    np.testing.assert_array_equal(np.asarray(ops.relu(y)[..., 0]), relu_expected)
    np.testing.assert_array_equal(
        conv_reference(
            SEED_IMAGE[..., None], VERTICAL_EDGE[..., None, None], None, (1, 1), ((0, 0), (0, 0))
        )[..., 0],
        expected,
    )


def test_conv_is_cross_correlation_not_flipped_convolution():
    # The kernel is not flipped: a planted flip would move the response and this would fail.
    x = np.zeros((3, 3, 1), np.float32)
    x[0, 0, 0] = 1.0
    w = np.arange(9, dtype=np.float32).reshape(3, 3, 1, 1)
    assert float(ops.conv2d(x, w)[0, 0, 0]) == 0.0  # w[0, 0]; a flipped kernel would give w[2, 2]
    assert float(ops.conv2d(x, w[::-1, ::-1])[0, 0, 0]) == 8.0


def test_conv_stride_2_by_hand():
    # x[r, c] = 4r + c; kernel picks x[2i, 2j] + 10 x[2i+1, 2j+1] = 88i + 22j + 50.
    x = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    w = np.array([[1, 0], [0, 10]], np.float32)[..., None, None]
    y = ops.conv2d(x, w, stride=2)
    np.testing.assert_array_equal(np.asarray(y[..., 0]), [[50, 72], [138, 160]])


def test_conv_same_padding_by_hand():
    # All-ones 3x3 image and kernel: each output counts the real pixels under the window.
    y = ops.conv2d(
        np.ones((3, 3, 1), np.float32), np.ones((3, 3, 1, 1), np.float32), padding="SAME"
    )
    np.testing.assert_array_equal(np.asarray(y[..., 0]), [[4, 6, 4], [6, 9, 6], [4, 6, 4]])


def test_conv_same_puts_the_odd_padding_row_at_the_bottom_right():
    # 5 rows, window 2, stride 2 -> 3 outputs need 1 padding row: lax/Flax put it at the bottom.
    # Split the other way (top/left) this would be [[1, 2, 2], [2, 4, 4], [2, 4, 4]].
    y = ops.conv2d(
        np.ones((5, 5, 1), np.float32), np.ones((2, 2, 1, 1), np.float32), stride=2, padding="SAME"
    )
    np.testing.assert_array_equal(np.asarray(y[..., 0]), [[4, 4, 2], [4, 4, 2], [2, 2, 1]])


def test_conv_bias_is_added_per_output_channel():
    x = np.ones((2, 2, 1), np.float32)
    w = np.ones((1, 1, 1, 2), np.float32)
    y = ops.conv2d(x, w, np.array([10.0, -1.0], np.float32))
    np.testing.assert_array_equal(np.asarray(y), np.broadcast_to([11.0, 0.0], (2, 2, 2)))


@pytest.mark.parametrize(
    ("shape", "kernel", "stride", "padding", "pads"),
    [
        ((7, 6, 2), (3, 2), (2, 2), "VALID", ((0, 0), (0, 0))),
        ((7, 6, 2), (3, 3), (2, 3), "SAME", ((1, 1), (0, 0))),  # 4 rows: 3*2+3-7 = 2 pads
        ((5, 4, 3), (2, 3), (1, 2), "SAME", ((0, 1), (0, 1))),  # odd pad at the bottom/right
        ((4, 5, 1), (3, 2), (3, 1), ((2, 0), (1, 3)), ((2, 0), (1, 3))),
    ],
)
def test_conv_matches_loop_reference(shape, kernel, stride, padding, pads):
    x = random_array(0, shape).astype(np.float32)
    w = random_array(1, (*kernel, shape[2], 3)).astype(np.float32)
    b = random_array(2, (3,)).astype(np.float32)
    if padding == "SAME":  # the hand-worked pads agree with lax's own SAME
        assert lax_same_pads(shape[:2], kernel, stride) == pads
    y = ops.conv2d(x, w, b, stride=stride, padding=padding)
    expected = conv_reference(x, w, b, stride, pads)
    assert y.shape == expected.shape
    atol = F32_ATOL_PER_TERM * math.prod(kernel) * shape[2]
    np.testing.assert_allclose(np.asarray(y), expected, rtol=0, atol=atol)


# --------------------------------------------------------------------------- conv2d properties


@st.composite
def window_cases(draw, pool: bool):
    """(x shape, window, stride arg, padding arg, explicit pads, seed) that fit together."""
    window = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    if pool:
        stride = draw(st.none() | st.tuples(st.integers(1, 3), st.integers(1, 3)))
    else:
        stride = draw(st.integers(1, 3) | st.tuples(st.integers(1, 3), st.integers(1, 3)))
    stride_hw = window if stride is None else ops.as_pair(stride, "stride")
    mode = draw(st.sampled_from(["VALID", "SAME", "explicit"]))
    if mode == "explicit":  # a pool's padding must stay below its window
        side = [st.integers(0, (k - 1) if pool else 2) for k in window]
        padding = tuple((draw(s), draw(s)) for s in side)
        pads = padding
    else:
        padding, pads = mode, ((0, 0), (0, 0))
    low = [max(1, k - sum(p)) if mode != "SAME" else 1 for k, p in zip(window, pads, strict=True)]
    hw = (draw(st.integers(low[0], 7)), draw(st.integers(low[1], 7)))
    if mode == "SAME":
        pads = lax_same_pads(hw, window, stride_hw)
    shape = (*hw, draw(st.integers(1, 3)))
    return shape, window, stride, padding, pads, draw(st.integers(0, 2**32 - 1))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@given(case=window_cases(pool=False), out_channels=st.integers(1, 3), use_bias=st.booleans())
def test_conv_matches_loop_reference_property(dtype, case, out_channels, use_bias):
    shape, kernel, stride, padding, pads, seed = case
    x = random_array(seed, shape)
    w = random_array(seed + 1, (*kernel, shape[2], out_channels))
    b = random_array(seed + 2, (out_channels,)) if use_bias else None
    with jax.enable_x64(dtype == "float64"):
        x, w = x.astype(dtype), w.astype(dtype)
        b = None if b is None else b.astype(dtype)
        y = ops.conv2d(
            jnp.asarray(x),
            jnp.asarray(w),
            None if b is None else jnp.asarray(b),
            stride=stride,
            padding=padding,
        )
        assert y.dtype == np.dtype(dtype)
    expected = conv_reference(x, w, b, ops.as_pair(stride, "stride"), pads)
    assert y.shape == expected.shape
    assert y.shape == ops.conv2d_shape(shape, w.shape, stride=stride, padding=padding)
    atol = F64_TOL if dtype == "float64" else F32_ATOL_PER_TERM * math.prod(kernel) * shape[2]
    np.testing.assert_allclose(np.asarray(y), expected, rtol=0, atol=atol)


@given(
    size=st.integers(1, 30),
    window=st.integers(1, 6),
    stride=st.integers(1, 4),
)
def test_same_output_is_ceil_in_over_stride_and_pads_match_lax(size, window, stride):
    pads = ops.explicit_padding((size, size), (window, window), (stride, stride), "SAME")
    assert pads == lax_same_pads((size, size), (window, window), (stride, stride))
    out = ops.conv2d_shape((size, size, 1), (window, window, 1, 1), stride=stride, padding="SAME")
    assert out == (math.ceil(size / stride), math.ceil(size / stride), 1)


@pytest.mark.parametrize(("size", "kernel", "stride"), [(5, 3, 1), (6, 2, 2), (7, 4, 3)])
def test_conv_same_matches_lax_same(size, kernel, stride):
    x = random_array(3, (size, size + 1, 2)).astype(np.float32)
    w = random_array(4, (kernel, kernel, 2, 3)).astype(np.float32)
    y = ops.conv2d(x, w, stride=stride, padding="SAME")
    y_lax = lax.conv_general_dilated(
        x[None], w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )[0]
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_lax), rtol=JIT_RTOL, atol=0)


def test_conv_jit_equals_no_jit():
    x = random_array(5, (7, 6, 2)).astype(np.float32)
    w = random_array(6, (3, 3, 2, 4)).astype(np.float32)
    b = random_array(7, (4,)).astype(np.float32)
    conv = functools.partial(ops.conv2d, stride=(2, 1), padding="SAME")
    np.testing.assert_allclose(
        np.asarray(jax.jit(conv)(x, w, b)), np.asarray(conv(x, w, b)), rtol=JIT_RTOL, atol=0
    )


def test_conv_vmap_equals_loop():
    x_NHWC = random_array(8, (3, 6, 5, 2)).astype(np.float32)
    w = random_array(9, (2, 3, 2, 4)).astype(np.float32)
    b = random_array(10, (4,)).astype(np.float32)
    conv = functools.partial(ops.conv2d, stride=2, padding=((1, 0), (0, 1)))
    batched = jax.vmap(conv, in_axes=(0, None, None))(x_NHWC, w, b)
    looped = np.stack([np.asarray(conv(x, w, b)) for x in x_NHWC])
    np.testing.assert_allclose(np.asarray(batched), looped, rtol=JIT_RTOL, atol=0)


# --------------------------------------------------------------------------- pooling by hand


def test_max_pool_seed_4x4_example():
    x = np.array(
        [[765, 765, 510, 0], [765, 765, 510, 0], [510, 510, 255, 0], [510, 510, 255, 0]],
        np.float32,
    )[..., None]
    np.testing.assert_array_equal(np.asarray(ops.max_pool(x, 2)[..., 0]), [[765, 510], [510, 255]])


def test_max_pool_seed_backward_example_routes_to_the_arg_maxes():
    # The seed says output[1, 1] = 6 came from input[2, 2]; input[2, 2] is 3. The 6 is at
    # input[3, 2], so that is where output[1, 1]'s gradient (-0.2) must go.
    x = np.array([[3, 5, 2, 1], [9, 1, 8, 4], [7, 2, 3, 0], [4, 1, 6, 2]], np.float32)[..., None]
    np.testing.assert_array_equal(np.asarray(ops.max_pool(x, 2)[..., 0]), [[9, 8], [7, 6]])
    dy = np.array([[-0.5, 0.3], [0.8, -0.2]], np.float32)[..., None]
    dx = jax.grad(lambda x: jnp.sum(ops.max_pool(x, 2) * dy))(jnp.asarray(x))[..., 0]
    expected = np.zeros((4, 4), np.float32)
    expected[1, 0], expected[1, 2], expected[2, 0], expected[3, 2] = -0.5, 0.3, 0.8, -0.2
    np.testing.assert_array_equal(np.asarray(dx), expected)


def _tie_heavy(shape, kind, seed=0):
    """Small integers, or a ReLU's plateaus of zeros: most windows hold tied maxima."""
    rng = np.random.default_rng(seed)
    if kind == "integers":
        return rng.integers(-1, 2, shape).astype(np.float64)
    return np.maximum(np.round(rng.normal(size=shape) * 2) / 2, 0.0)


@pytest.mark.parametrize(
    "shape, window", [((26, 26, 32), 2), ((11, 11, 3), 2), ((7, 9, 2), 3), ((6, 7, 1), (2, 3))]
)
@pytest.mark.parametrize("kind", ["integers", "plateaus"])
def test_max_pool_tiled_equals_reduce_window_values_and_gradients_bit_for_bit(shape, window, kind):
    # float64 and small integers: every value and sum is exact, so the tie policy (the first
    # arg-max in row-major window order takes the error) must match bit for bit; odd sizes
    # drop the last rows and columns.
    with jax.enable_x64(True):
        x = jnp.asarray(_tie_heavy(shape, kind))
        out_shape = ops.pool_shape(shape, window)
        dy = jnp.asarray(np.random.default_rng(1).integers(-3, 4, out_shape), jnp.float64)
        tiled = functools.partial(ops.max_pool_tiled, window_hw=ops.as_pair(window, "window"))
        plain = functools.partial(ops.max_pool_reduce_window, window=window)
        y_tiled, pull_tiled = jax.vjp(tiled, x)
        y_plain, pull_plain = jax.vjp(plain, x)
        (kh, kw), (ho, wo, c) = ops.as_pair(window, "window"), out_shape
        windows = x[: ho * kh, : wo * kw].reshape(ho, kh, wo, kw, c)
        maxima = jnp.sum(windows == jnp.max(windows, axis=(1, 3), keepdims=True), axis=(1, 3))
        assert int(jnp.sum(maxima > 1)) > maxima.size // 8, maxima.size  # the ties are there
        np.testing.assert_array_equal(y_tiled, y_plain)
        np.testing.assert_array_equal(pull_tiled(dy)[0], pull_plain(dy)[0])
        np.testing.assert_array_equal(ops.max_pool(x, window), y_plain)


def test_max_pool_takes_the_tiled_form_only_for_tiling_windows():
    # jax.grad of a tiling pool is selects (no select-and-scatter, which XLA:CPU lowers to a
    # scatter); an overlapping or padded pool keeps reduce_window.
    x = jnp.zeros((6, 6, 2))

    def primitives(**pool):
        jaxpr = jax.make_jaxpr(jax.grad(lambda x: jnp.sum(ops.max_pool(x, **pool))))(x)
        return {str(e.primitive) for e in jaxpr.jaxpr.eqns}

    assert not {"reduce_window_max", "select_and_scatter_add"} & primitives(window=2)
    assert "select_and_scatter_add" in primitives(window=2, stride=1)
    assert "select_and_scatter_add" in primitives(window=2, padding=((1, 1), (1, 1)))


@pytest.mark.parametrize("where", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_max_pool_tiled_gives_nan_wherever_the_window_holds_it(where):
    x = np.array([[1.0, 3.0], [2.0, 0.0]], np.float32)
    x[where] = np.nan
    y = ops.max_pool(jnp.asarray(x)[..., None], 2)
    assert np.isnan(np.asarray(y)).all()
    assert np.isnan(np.asarray(ops.max_pool_reduce_window(jnp.asarray(x)[..., None], 2))).all()


def test_max_pool_tiled_keeps_integer_dtypes():
    x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (6, 4, 3)), jnp.uint8)
    y = ops.max_pool(x, 2)
    assert y.dtype == jnp.uint8
    np.testing.assert_array_equal(y, ops.max_pool_reduce_window(x, 2))


def test_pool_odd_size_drops_last_row_and_column():
    # 5x5 with 2x2 windows: 2x2 output; row 4 and column 4 (which hold the max, 24) are dropped.
    x = np.arange(25, dtype=np.float32).reshape(5, 5, 1)
    np.testing.assert_array_equal(np.asarray(ops.max_pool(x, 2)[..., 0]), [[6, 8], [16, 18]])
    np.testing.assert_array_equal(np.asarray(ops.avg_pool(x, 2)[..., 0]), [[3, 5], [13, 15]])


def test_avg_pool_by_hand():
    x = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    np.testing.assert_array_equal(
        np.asarray(ops.avg_pool(x, 2)[..., 0]), [[2.5, 4.5], [10.5, 12.5]]
    )


def test_avg_pool_count_include_pad_by_hand():
    # SAME with window 2, stride 1 pads one zero row/column at the bottom/right.
    x = np.ones((3, 3, 1), np.float32)
    with_pad = ops.avg_pool(x, 2, 1, "SAME", count_include_pad=True)[..., 0]
    without = ops.avg_pool(x, 2, 1, "SAME", count_include_pad=False)[..., 0]
    np.testing.assert_array_equal(
        np.asarray(with_pad), [[1, 1, 0.5], [1, 1, 0.5], [0.5, 0.5, 0.25]]
    )
    np.testing.assert_array_equal(np.asarray(without), np.ones((3, 3)))


def test_float32_stays_float32_with_x64_enabled():
    # float64 mode must not promote a float32 example (avg_pool's per-window counts once did).
    x = np.ones((3, 3, 2), np.float32)
    with jax.enable_x64(True):
        for count_include_pad in (True, False):
            y = ops.avg_pool(x, 2, 1, "SAME", count_include_pad=count_include_pad)
            assert y.dtype == np.float32
        assert ops.max_pool(x, 2, 1, "SAME").dtype == np.float32
        w, b = np.ones((2, 2, 2, 1), np.float32), np.ones(1, np.float32)
        assert ops.conv2d(x, w, b, padding="SAME").dtype == np.float32
        assert ops.relu(x).dtype == ops.flatten(x).dtype == np.float32


def test_max_pool_padding_never_wins():
    # All-negative input: zero padding would put 0 on the border, -inf padding never wins.
    x = -np.ones((3, 3, 2), np.float32)
    np.testing.assert_array_equal(np.asarray(ops.max_pool(x, 2, 1, "SAME")), -np.ones((3, 3, 2)))
    np.testing.assert_array_equal(
        np.asarray(ops.max_pool(x, 3, 2, ((1, 1), (1, 1)))), -np.ones((2, 2, 2))
    )


def test_pool_same_matches_lax_same():
    x = random_array(11, (7, 5, 2)).astype(np.float32)
    y_lax = lax.reduce_window(x, -jnp.inf, lax.max, (3, 2, 1), (2, 2, 1), "SAME")
    np.testing.assert_array_equal(np.asarray(ops.max_pool(x, (3, 2), 2, "SAME")), y_lax)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@given(case=window_cases(pool=True), count_include_pad=st.booleans())
def test_pools_match_loop_reference_property(dtype, case, count_include_pad):
    shape, window, stride, padding, pads, seed = case
    x = random_array(seed, shape).astype(dtype)
    stride_hw = window if stride is None else stride
    with jax.enable_x64(dtype == "float64"):
        y_max = ops.max_pool(jnp.asarray(x), window, stride, padding)
        y_avg = ops.avg_pool(
            jnp.asarray(x), window, stride, padding, count_include_pad=count_include_pad
        )
        assert y_max.dtype == y_avg.dtype == np.dtype(dtype)
    expected_max = pool_reference(x, window, stride_hw, pads, "max")
    expected_avg = pool_reference(x, window, stride_hw, pads, "avg", count_include_pad)
    assert y_max.shape == y_avg.shape == expected_max.shape
    assert y_max.shape == ops.pool_shape(shape, window, stride, padding)
    np.testing.assert_array_equal(np.asarray(y_max), expected_max)  # a max rounds nothing
    atol = F64_TOL if dtype == "float64" else F32_ATOL_PER_TERM * math.prod(window)
    np.testing.assert_allclose(np.asarray(y_avg), expected_avg, rtol=0, atol=atol)


def test_pool_jit_equals_no_jit_and_vmap_equals_loop():
    x_NHWC = random_array(12, (3, 5, 6, 2)).astype(np.float32)
    for pool in (
        functools.partial(ops.max_pool, window=3, stride=2, padding="SAME"),
        functools.partial(
            ops.avg_pool, window=2, stride=1, padding=((1, 0), (0, 1)), count_include_pad=False
        ),
    ):
        looped = np.stack([np.asarray(pool(x)) for x in x_NHWC])
        np.testing.assert_allclose(np.asarray(jax.vmap(pool)(x_NHWC)), looped, rtol=JIT_RTOL)
        np.testing.assert_allclose(np.asarray(jax.jit(pool)(x_NHWC[0])), looped[0], rtol=JIT_RTOL)


def test_avg_pool_of_integers_averages_in_float_without_wrapping_around():
    """Four uint8 200s sum to 800, past uint8's 255: summed in uint8 they would give 32 / 4 = 8."""
    x = np.full((4, 4, 1), 200, np.uint8)
    y = ops.avg_pool(x, 2)
    assert y.dtype == jnp.float32
    np.testing.assert_array_equal(y, np.full((2, 2, 1), 200.0, np.float32))
    # int8 with a window over padding, counting only the real inputs: the float result exactly.
    x8 = np.array([[100, -100, 7], [90, 120, -128], [1, 2, 3]], np.int8)[..., None]
    pool = functools.partial(ops.avg_pool, window=2, stride=1, padding="SAME")
    for include in (True, False):
        want = pool(x8.astype(np.float32), count_include_pad=include)
        np.testing.assert_array_equal(pool(x8, count_include_pad=include), want)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int32])
def test_max_pool_of_integers_keeps_the_dtype_and_padding_never_wins(dtype):
    low = np.iinfo(dtype).min
    x = np.array([[low, low + 1], [low + 3, low + 2]], dtype)[..., None]
    y = ops.max_pool(x, 2, 1, "SAME")  # the bottom and right windows hold padding
    assert y.dtype == dtype
    np.testing.assert_array_equal(y[..., 0], np.array([[3, 2], [3, 2]]) + low)


# --------------------------------------------------------------------------- relu, dense, flatten


def test_relu_values_and_gradient_at_zero():
    x = np.array([-2.0, -0.0, 0.0, 1e-30, 3.0], np.float32)
    expected = np.array([0.0, 0.0, 0.0, 1e-30, 3.0], np.float32)  # tiny positives survive
    np.testing.assert_array_equal(np.asarray(ops.relu(x)), expected)
    grad = jax.grad(lambda v: ops.relu(v))
    assert float(grad(0.0)) == 0.0
    assert float(grad(-1.0)) == 0.0
    assert float(grad(2.0)) == 1.0
    # The check can fail: the tempting jnp.maximum(x, 0) splits the tie and gives 1/2 at 0.
    assert float(jax.grad(lambda v: jnp.maximum(v, 0.0))(0.0)) == 0.5


def test_dense_by_hand():
    x = np.array([1.0, 2.0], np.float32)
    w = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)
    b = np.array([0.5, 0.5, -0.5], np.float32)
    np.testing.assert_array_equal(np.asarray(ops.dense(x, w, b)), [9.5, 12.5, 14.5])
    np.testing.assert_array_equal(np.asarray(ops.dense(x, w)), [9.0, 12.0, 15.0])


def test_flatten_index_is_h_W_C_plus_w_C_plus_c():
    H, W, C = 3, 4, 5
    x = np.arange(H * W * C, dtype=np.float32).reshape(H, W, C) * 7 + 1
    flat = np.asarray(ops.flatten(x))
    assert flat.shape == (H * W * C,)
    for h in range(H):
        for w in range(W):
            for c in range(C):
                assert flat[h * W * C + w * C + c] == x[h, w, c]


def test_flatten_seed_example_5x5x64():
    # The seed maps flat index 500 to (1, 2, 12), "500 = 1*320 + 2*64 + 12"; that sum is 460.
    # 500 = 1*320 + 2*64 + 52, so index 500 is (1, 2, 52), and (1, 2, 12) is index 460.
    x = np.arange(5 * 5 * 64, dtype=np.float32).reshape(5, 5, 64)
    flat = np.asarray(ops.flatten(x))
    assert flat[500] == x[1, 2, 52]
    assert flat[460] == x[1, 2, 12]


# --------------------------------------------------------------------------- errors

X = np.zeros((5, 5, 3), np.float32)
W = np.zeros((3, 3, 3, 2), np.float32)


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (
            lambda: ops.conv2d(X[..., 0], W),
            r"x must have rank 3 \(H, W, C, one example; vmap for a batch\), got shape \(5, 5\)",
        ),
        (lambda: ops.conv2d(X[None], W), r"x must have rank 3 .*got shape \(1, 5, 5, 3\)"),
        (
            lambda: ops.conv2d(X, W[..., 0]),
            r"kernel must have rank 4 \(H, W, I, O.*got shape \(3, 3, 3\)",
        ),
        (lambda: ops.max_pool(X[0], 2), r"x must have rank 3 \(H, W, C.*got shape \(5, 3\)"),
        (lambda: ops.avg_pool(X[None], 2), r"x must have rank 3 .*got shape \(1, 5, 5, 3\)"),
        (lambda: ops.dense(X, W[0, 0]), r"x must have rank 1 \(I, .*got shape \(5, 5, 3\)"),
        (
            lambda: ops.dense(X[0, 0], W[0]),
            r"kernel must have rank 2 \(I, O.*got shape \(3, 3, 2\)",
        ),
    ],
)
def test_wrong_rank_names_argument_shape_and_layout(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


def test_channel_mismatch():
    with pytest.raises(
        ValueError,
        match=r"x has 2 channels \(shape \(5, 5, 2\)\) but the kernel expects 3 input channels "
        r"\(shape \(3, 3, 3, 2\), HWIO\)",
    ):
        ops.conv2d(X[..., :2], W)
    with pytest.raises(ValueError, match=r"x has 2 features .* kernel expects 3"):
        ops.dense(X[0, 0, :2], W[0, 0])


def test_window_larger_than_padded_input():
    small = np.zeros((2, 4, 3), np.float32)
    with pytest.raises(
        ValueError, match=r"kernel \(3, 3\) is larger than the padded input \(2, 4\)"
    ):
        ops.conv2d(small, W)
    thin = np.zeros((1, 4, 3), np.float32)  # one padding row is not enough, two are
    with pytest.raises(ValueError, match=r"larger than the padded input \(2, 4\)"):
        ops.conv2d(thin, W, padding=((1, 0), (0, 0)))
    assert ops.conv2d(thin, W, padding=((1, 1), (0, 0))).shape == (1, 2, 2)
    with pytest.raises(
        ValueError, match=r"window \(3, 3\) is larger than the padded input \(2, 4\)"
    ):
        ops.max_pool(small, 3)
    with pytest.raises(ValueError, match=r"window \(3, 1\) is larger than the padded input"):
        ops.avg_pool(small, (3, 1))


@pytest.mark.parametrize("stride", [0, -1, (1, 0), (0, 2)])
def test_stride_below_one(stride):
    with pytest.raises(ValueError, match=r"stride must be >= 1, got"):
        ops.conv2d(X, W, stride=stride)
    with pytest.raises(ValueError, match=r"stride must be >= 1, got"):
        ops.max_pool(X, 2, stride)


@pytest.mark.parametrize("stride", [1.5, 2.0, "2", True, (1, 2, 3), (1.0, 1), None])
def test_stride_of_wrong_type(stride):
    with pytest.raises(TypeError, match=r"stride must be an int or a pair of ints, got"):
        ops.conv2d(X, W, stride=stride)


@pytest.mark.parametrize("window", [2.0, "2", (2,), (2, True)])
def test_window_of_wrong_type(window):
    with pytest.raises(TypeError, match=r"window must be an int or a pair of ints, got"):
        ops.max_pool(X, window)
    with pytest.raises(ValueError, match=r"window must be >= 1, got 0"):
        ops.avg_pool(X, 0)


@pytest.mark.parametrize("padding", ["same", "FULL", "", (1, 1), ((1, 1),), ((1, 1, 1), (0, 0))])
def test_unknown_padding(padding):
    with pytest.raises(ValueError, match=r"padding must be 'VALID', 'SAME' or \(\(top, bottom\)"):
        ops.conv2d(X, W, padding=padding)
    with pytest.raises(ValueError, match=r"padding must be 'VALID', 'SAME'"):
        ops.max_pool(X, 2, padding=padding)


@pytest.mark.parametrize("padding", [((-1, 0), (0, 0)), ((0, 0), (0, -2))])
def test_negative_padding(padding):
    with pytest.raises(ValueError, match=r"padding must be >= 0 on every side, got"):
        ops.conv2d(X, W, padding=padding)
    with pytest.raises(ValueError, match=r"padding must be >= 0 on every side"):
        ops.avg_pool(X, 2, padding=padding)


@pytest.mark.parametrize("padding", [((2, 0), (0, 0)), ((0, 0), (0, 3))])
def test_pool_padding_not_below_window(padding):
    with pytest.raises(ValueError, match=r"pool padding .* smaller than the window \(2, 2\)"):
        ops.max_pool(X, 2, padding=padding)
    with pytest.raises(ValueError, match=r"pool padding .* smaller than the window"):
        ops.avg_pool(X, 2, padding=padding, count_include_pad=False)
    assert ops.max_pool(X, 2, padding=((1, 1), (1, 1))).shape == (3, 3, 3)


@pytest.mark.parametrize(
    "x_dtype, fix",
    [
        (np.uint8, r"integer pixels 0..255 become floats by x.astype\(jnp.float32\) / 255"),
        (jnp.float16, r"cast x: x.astype\(jnp.float32\)"),
    ],
)
def test_conv_and_dense_refuse_mixed_dtypes_with_the_cast(x_dtype, fix):
    w, b = np.ones((3, 3, 1, 2), np.float32), np.zeros(2, np.float32)
    with pytest.raises(ValueError) as raised:
        ops.conv2d(np.ones((5, 5, 1), x_dtype), w, b)
    dtype = np.dtype(x_dtype)
    assert re.fullmatch(
        rf"conv2d takes x, kernel and bias of one dtype, got x {dtype}, kernel float32, "
        rf"bias float32; {fix}",
        str(raised.value),
    )
    with pytest.raises(ValueError, match=rf"dense takes .* got x {dtype}, kernel float32; {fix}"):
        ops.dense(np.ones(3, x_dtype), np.ones((3, 2), np.float32))
    with pytest.raises(ValueError, match=r"got x float32, kernel float32, bias float16; cast"):
        ops.conv2d(np.ones((5, 5, 1), np.float32), w, b.astype(np.float16))


def test_bias_of_wrong_shape():
    with pytest.raises(ValueError, match=r"bias must have shape \(2,\), got \(3,\)"):
        ops.conv2d(X, W, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"bias must have shape \(2,\), got \(1, 2\)"):
        ops.conv2d(X, W, np.zeros((1, 2), np.float32))
    with pytest.raises(ValueError, match=r"bias must have shape \(2,\), got \(\)"):
        ops.dense(X[0, 0], W[0, 0], np.float32(0.0))


def test_shape_rules_raise_without_arrays():
    with pytest.raises(ValueError, match=r"x must have rank 3 \(H, W, C\), got shape \(5, 5\)"):
        ops.conv2d_shape((5, 5), (3, 3, 1, 1))
    with pytest.raises(ValueError, match=r"kernel must have rank 4 \(H, W, I, O\)"):
        ops.conv2d_shape((5, 5, 1), (3, 3, 1))
    with pytest.raises(ValueError, match=r"x must have rank 3 \(H, W, C\), got shape \(5,\)"):
        ops.pool_shape((5,), 2)
    assert ops.conv2d_shape((28, 28, 1), (3, 3, 1, 32)) == (26, 26, 32)  # the seed's example
    assert ops.pool_shape((26, 26, 32), 2) == (13, 13, 32)
    assert ops.pool_shape((11, 11, 64), 2) == (5, 5, 64)
