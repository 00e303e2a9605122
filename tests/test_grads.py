"""cnnjax.grads: the per-layer hand-derived backward rules, worked by hand and against jax.grad, and
their custom_vjp twins."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import grads, losses, models, ops

# float32 sums of up to a few hundred products of O(1) numbers: a few hundred ulps of slack.
F32_TOL = 1e-5
# float64 agreement between two orderings of the same sums.
F64_TOL = 1e-12


# --------------------------------------------------------------------------- worked examples


def test_conv2d_vjp_worked_example():
    # y[i, j] = x[i, j] - x[i+1, j+1] for the kernel [[1, 0], [0, -1]].
    x = jnp.arange(1.0, 10.0).reshape(3, 3, 1)
    w = jnp.array([[1.0, 0.0], [0.0, -1.0]]).reshape(2, 2, 1, 1)
    dy = jnp.array([[1.0, 2.0], [3.0, 4.0]]).reshape(2, 2, 1)
    dx, dw, db = grads.conv2d_vjp(x, w, dy)
    # dw[m, n] = sum_ij dy[i, j] x[i+m, j+n]: 1*1+2*2+3*4+4*5 = 37, and so on.
    np.testing.assert_array_equal(dw[:, :, 0, 0], [[37.0, 47.0], [67.0, 77.0]])
    np.testing.assert_array_equal(db, [10.0])
    # dx: +dy at its own position, -dy one step down-right (the flipped kernel).
    np.testing.assert_array_equal(
        dx[:, :, 0], [[1.0, 2.0, 0.0], [3.0, 3.0, -2.0], [0.0, -3.0, -4.0]]
    )


def test_conv2d_vjp_stride_two_by_hand():
    x = jnp.arange(16.0).reshape(4, 4, 1)  # x[r, c] = 4r + c
    w = jnp.ones((2, 2, 1, 1))
    dy = jnp.array([[1.0, 2.0], [3.0, 4.0]]).reshape(2, 2, 1)
    dx, dw, _ = grads.conv2d_vjp(x, w, dy, stride=2)
    # Non-overlapping blocks: each input gets its block's error.
    np.testing.assert_array_equal(
        dx[:, :, 0], [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]
    )
    # dw[m, n] = sum_ij dy[i, j] (4(2i + m) + 2j + n) = 10 (4m + n) + 68.
    np.testing.assert_array_equal(dw[:, :, 0, 0], [[68.0, 78.0], [108.0, 118.0]])


def test_conv2d_vjp_rows_no_window_reaches_get_zero():
    x = jax.random.normal(jax.random.key(0), (5, 5, 2))
    w = jax.random.normal(jax.random.key(1), (2, 2, 2, 3))
    dy = jnp.ones((2, 2, 3))  # 5x5, kernel 2, stride 2: row 4 and column 4 are never read
    dx, _, _ = grads.conv2d_vjp(x, w, dy, stride=2)
    assert jnp.all(dx[4] == 0) and jnp.all(dx[:, 4] == 0)
    assert jnp.any(dx[:4, :4] != 0)


def test_max_pool_vjp_seed_example():
    # The seed's 4x4 example. The arg-max of the bottom-right window is input[3, 2] (value 6),
    # not input[2, 2] (value 3) as its text says; its drawing has the right position.
    x = jnp.array([[3, 5, 2, 1], [9, 1, 8, 4], [7, 2, 3, 0], [4, 1, 6, 2]], jnp.float32)
    dy = jnp.array([[-0.5, 0.3], [0.8, -0.2]])
    dx = grads.max_pool_vjp(x[..., None], dy[..., None], window=2)[..., 0]
    expected = np.zeros((4, 4), np.float32)
    expected[1, 0], expected[1, 2], expected[2, 0], expected[3, 2] = -0.5, 0.3, 0.8, -0.2
    np.testing.assert_array_equal(dx, expected)


def test_max_pool_vjp_ties_go_to_first_in_row_major_order():
    x = jnp.array([[1.0, 3.0, 0.0, 0.0], [3.0, 2.0, 0.0, 0.0]])[..., None]
    dx = grads.max_pool_vjp(x, jnp.array([[[1.0], [2.0]]]), window=2)[..., 0]
    # Left window: 3 at (0, 1) and (1, 0): (0, 1) comes first. Right window: all zeros: (0, 2).
    np.testing.assert_array_equal(dx, [[0.0, 1.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    reference = jax.vjp(lambda x: ops.max_pool(x, 2), x)[1](jnp.array([[[1.0], [2.0]]]))[0]
    np.testing.assert_array_equal(dx, reference[..., 0])


@pytest.mark.parametrize(
    ("shape", "window"), [((26, 26, 32), 2), ((11, 11, 64), 2), ((7, 9, 3), 3), ((6, 7, 2), (2, 3))]
)
def test_max_pool_vjp_tiled_equals_taps_ties_and_dropped_rows_included(shape, window):
    # Values on a coarse grid after a ReLU: many windows hold tied maxima, zeros above all.
    key_x, key_dy = jax.random.split(jax.random.key(0))
    x = jax.nn.relu(jnp.round(jax.random.normal(key_x, shape) * 2) / 2)
    window_hw = ops.as_pair(window, "window")
    out_hw = (shape[0] // window_hw[0], shape[1] // window_hw[1])
    dy = jax.random.normal(key_dy, (*out_hw, shape[2]))
    tiled = grads.max_pool_vjp_tiled(x, dy, window_hw)
    taps = grads.max_pool_vjp_taps(x, dy, window=window)
    assert int(jnp.sum(x == 0)) > x.size // 3  # the ties are there
    np.testing.assert_array_equal(tiled, taps)  # the same rule: exactly equal, no rounding
    np.testing.assert_array_equal(grads.max_pool_vjp(x, dy, window=window), tiled)


def test_max_pool_vjp_tiled_gives_a_nan_window_no_winner_as_taps_does():
    x = jnp.array([[1.0, jnp.nan], [0.0, 2.0]])[..., None]
    dy = jnp.array([[[5.0]]])
    np.testing.assert_array_equal(
        grads.max_pool_vjp_tiled(x, dy, (2, 2)), grads.max_pool_vjp_taps(x, dy, window=2)
    )


def test_max_pool_vjp_overlapping_windows_accumulate():
    x = jnp.array([[1.0, 3.0, 2.0]])[..., None]
    dx = grads.max_pool_vjp(x, jnp.array([[[10.0], [5.0]]]), window=(1, 2), stride=1)
    np.testing.assert_array_equal(dx[..., 0], [[0.0, 15.0, 0.0]])


def test_pool_vjps_give_dropped_last_row_and_column_zero():
    x = jax.random.normal(jax.random.key(2), (5, 5, 3))
    dy = jnp.ones((2, 2, 3))
    for rule in (grads.max_pool_vjp, grads.avg_pool_vjp):
        dx = rule(x, dy, window=2)
        assert jnp.all(dx[4] == 0) and jnp.all(dx[:, 4] == 0)


def test_avg_pool_vjp_by_hand():
    dx = grads.avg_pool_vjp(jnp.zeros((2, 2, 1)), jnp.array([[[8.0]]]), window=2)
    np.testing.assert_array_equal(dx[..., 0], [[2.0, 2.0], [2.0, 2.0]])
    # 3x3 input, 2x2 windows, stride 2, SAME pads one row/column at the bottom/right: the
    # corner window holds one real input. Excluding padding, it gets all of its dy.
    pad_kwargs = dict(window=2, stride=2, padding="SAME")
    dy = jnp.ones((2, 2, 1))
    dx = grads.avg_pool_vjp(jnp.zeros((3, 3, 1)), dy, **pad_kwargs, count_include_pad=False)
    np.testing.assert_array_equal(dx[..., 0], [[0.25, 0.25, 0.5], [0.25, 0.25, 0.5], [0.5, 0.5, 1]])
    dx = grads.avg_pool_vjp(jnp.zeros((3, 3, 1)), dy, **pad_kwargs, count_include_pad=True)
    np.testing.assert_array_equal(dx[..., 0], np.full((3, 3), 0.25))


def test_dense_vjp_by_hand():
    x, w, dy = (
        jnp.array([1.0, 2.0]),
        jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]),
        jnp.array([1.0, 0.0, -1.0]),
    )
    dx, dw, db = grads.dense_vjp(x, w, dy)
    np.testing.assert_array_equal(dx, [-2.0, -2.0])
    np.testing.assert_array_equal(dw, [[1.0, 0.0, -1.0], [2.0, 0.0, -2.0]])
    np.testing.assert_array_equal(db, dy)


def test_relu_vjp_is_zero_at_the_kink_like_jax_grad():
    x = jnp.array([-1.0, 0.0, 2.0])
    np.testing.assert_array_equal(grads.relu_vjp(x, jnp.ones(3)), [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(jax.grad(lambda x: ops.relu(x).sum())(x), [0.0, 0.0, 1.0])


def test_flatten_vjp_inverts_the_row_major_index():
    x = jnp.zeros((2, 3, 4))
    dx = grads.flatten_vjp(x, jnp.arange(24.0))
    h, w, c = 1, 2, 3
    assert dx[h, w, c] == h * 3 * 4 + w * 4 + c


def test_cross_entropy_vjp_seed_example():
    # The seed's digit "7": p_7 = 181.27 / 224.23 = 0.808, so dL/dz_7 = -0.192 (checked).
    z = jnp.array([1.2, 0.8, 2.1, 1.5, 0.3, 1.0, 2.5, 5.2, 1.8, 0.9])
    dz = grads.cross_entropy_vjp(z, jnp.array(7))
    assert abs(float(dz[7]) - (-0.192)) < 5e-4
    assert abs(float(dz[6]) - 0.054) < 5e-4
    np.testing.assert_allclose(dz, losses.softmax(z) - jax.nn.one_hot(7, 10), atol=0)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 1.0])
def test_cross_entropy_vjp_matches_jax_grad_and_sums_to_zero(smoothing):
    def total_loss(z):
        return losses.cross_entropy(z, labels, label_smoothing=smoothing).sum()

    with jax.enable_x64(True):
        z = jnp.asarray(np.random.default_rng(0).normal(size=(4, 7)) * 3)
        labels = jnp.array([0, 6, 3, 3])
        dz = grads.cross_entropy_vjp(z, labels, label_smoothing=smoothing)
        expected = jax.grad(total_loss)(z)
        row_sums = dz.sum(-1)
    assert dz.dtype == jnp.float64
    np.testing.assert_allclose(dz, expected, atol=F64_TOL)
    np.testing.assert_allclose(row_sums, 0.0, atol=F64_TOL)


# --------------------------------------------------------------------------- twins and batching


def test_custom_vjp_twins_route_jax_grad_through_the_rules():
    key = jax.random.key(3)
    kx, kw, kb = jax.random.split(key, 3)
    x, w, b = [
        jax.random.normal(kx, (7, 6, 2)),
        jax.random.normal(kw, (3, 2, 2, 4)),
        jax.random.normal(kb, (4,)),
    ]
    layer = models.Conv(4, (3, 2), stride=2, padding="SAME")
    dy = jax.random.normal(key, ops.conv2d(x, w, b, stride=2, padding="SAME").shape)

    def twin(x, p):
        return jnp.vdot(dy, models.layer_apply(layer, p, x, models.HAND_DERIVED))

    dx, dp = jax.grad(twin, (0, 1))(x, {"kernel": w, "bias": b})
    rule = grads.conv2d_vjp(x, w, dy, stride=2, padding="SAME")
    for got, want in zip((dx, dp["kernel"], dp["bias"]), rule, strict=True):
        np.testing.assert_array_equal(got, want)


def test_hand_derived_table_gives_the_plain_forward():
    spec, shape = models.REFERENCE_CNN, models.REFERENCE_INPUT_SHAPE
    params = models.init(jax.random.key(0), spec, shape)
    x = jax.random.normal(jax.random.key(1), shape)
    np.testing.assert_array_equal(
        models.apply(params, x, spec), models.apply(params, x, spec, models.HAND_DERIVED)
    )


def test_conv2d_vjp_vmapped_equals_a_loop_and_jit_equals_no_jit():
    key = jax.random.key(4)
    x = jax.random.normal(key, (3, 9, 8, 2))
    w = jax.random.normal(jax.random.key(5), (3, 3, 2, 4))
    dy = jax.random.normal(jax.random.key(6), (3, 4, 3, 4))
    rule = lambda x, dy: grads.conv2d_vjp(x, w, dy, stride=2)  # noqa: E731
    batched = jax.vmap(rule)(x, dy)
    jitted = jax.jit(jax.vmap(rule))(x, dy)
    for n in range(3):
        for got, want in zip(batched, rule(x[n], dy[n]), strict=True):
            np.testing.assert_allclose(got[n], want, rtol=F32_TOL, atol=F32_TOL)
    for got, want in zip(jitted, batched, strict=True):
        np.testing.assert_allclose(got, want, rtol=F32_TOL, atol=F32_TOL)


# --------------------------------------------------------------------------- errors and dtypes


@pytest.mark.parametrize("include", [True, False])
def test_pool_vjps_keep_float32_with_x64_enabled(include):
    with jax.enable_x64(True):
        x, dy = jnp.ones((5, 5, 2), jnp.float32), jnp.ones((3, 3, 2), jnp.float32)
        kwargs = dict(window=3, stride=2, padding=((1, 1), (1, 1)))
        dx = grads.avg_pool_vjp(x, dy, **kwargs, count_include_pad=include)
        dx_max = grads.max_pool_vjp(x, dy, **kwargs)
    assert dx.dtype == jnp.float32 and dx_max.dtype == jnp.float32


def test_an_error_of_the_wrong_shape_is_named():
    x, w = jnp.zeros((6, 6, 2)), jnp.zeros((3, 3, 2, 4))
    with pytest.raises(ValueError, match=r"dy must have the conv2d output's shape \(2, 2, 4\)"):
        grads.conv2d_vjp(x, w, jnp.zeros((4, 4, 4)), stride=2)
    with pytest.raises(ValueError, match=r"pool output's shape \(3, 3, 2\), got \(6, 6, 2\)"):
        grads.max_pool_vjp(x, x, window=2)
    with pytest.raises(ValueError, match=r"dense output's shape \(3,\)"):
        grads.dense_vjp(jnp.zeros(2), jnp.zeros((2, 3)), jnp.zeros(2))
    with pytest.raises(ValueError, match=r"flatten output's shape \(72,\)"):
        grads.flatten_vjp(x, jnp.zeros(71))
