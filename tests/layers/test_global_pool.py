"""GlobalAvgPool: the mean over positions, its rule dy / (H W) against autodiff and finite
differences, Flax, Dense after it, and a network with it that trains."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import backprop, gradcheck, models
from cnnjax.layers import EVAL, Conv, Dense, GlobalAvgPool, ReLU
from tests.layers import checks


@pytest.mark.parametrize("seed", range(4))
def test_vjp_matches_autodiff_and_finite_differences(seed):
    (case,) = GlobalAvgPool.gradcheck_cases(np.random.default_rng(seed))
    gradcheck.assert_layer(case.layer, case.in_shape, dtypes="float64", seed=seed)


def test_values_worked_by_hand():
    x = jnp.arange(12.0).reshape(2, 3, 2)  # channel 0: 0, 2, ..., 10; channel 1: 1, 3, ..., 11
    np.testing.assert_array_equal(GlobalAvgPool().apply({}, x, EVAL), [5.0, 6.0])
    dx, dp = GlobalAvgPool().vjp({}, x, jnp.array([6.0, -12.0]), EVAL)
    np.testing.assert_array_equal(dx[..., 0], np.full((2, 3), 1.0))  # 6 / (2 * 3)
    np.testing.assert_array_equal(dx[..., 1], np.full((2, 3), -2.0))
    assert dp == {}


def test_shapes_and_dense_after_it():
    spec = (Conv(4, 3), GlobalAvgPool(), Dense(5))
    assert models.output_shapes(spec, (9, 7, 2)) == [(7, 5, 4), (4,), (5,)]
    params = models.init(jax.random.key(0), spec, (9, 7, 2))
    assert params["dense1"]["kernel"].shape == (4, 5)
    with pytest.raises(ValueError, match="H x W x C"):
        GlobalAvgPool().output_shape((12,))


def test_flax_counterpart_equals_the_layer():
    x_NHWC = jax.random.normal(jax.random.key(0), (3, 5, 4, 2))
    want = jax.vmap(lambda x: GlobalAvgPool().apply({}, x, EVAL))(x_NHWC)
    # float32 means summed in another order: a few eps32 of the scale
    assert checks.rel_err(GlobalAvgPool().flax(x_NHWC, train=False), want) <= 1e-6


def test_backprop_and_the_twin_in_a_network_equal_autodiff():
    spec = (Conv(3, 3), ReLU(), GlobalAvgPool(), Dense(4))
    rows = gradcheck.check_network(spec, (6, 5, 2), np.random.default_rng(0), "float64")
    assert {"net/conv1/kernel hand vs autodiff", "net/conv1/kernel custom_vjp vs autodiff"} <= {
        r.check for r in rows
    }
    assert all(r.passed for r in rows), gradcheck.format_table(rows)


def test_a_network_with_it_trains():
    """Class k: channel k brighter. Five SGD steps by backprop lower the loss."""
    spec = (Conv(4, 3, 1, "SAME"), ReLU(), GlobalAvgPool(), Dense(3))
    labels = jnp.arange(24) % 3
    x = (
        jax.random.normal(jax.random.key(1), (24, 6, 6, 3))
        + 2 * jax.nn.one_hot(labels, 3)[:, None, None, :]
    )
    params = models.init(jax.random.key(0), spec, (6, 6, 3))
    step = jax.jit(lambda p: backprop.value_and_grad(p, x, labels, spec), static_argnums=())
    losses = []
    for _ in range(6):
        loss, grads = step(params)
        losses.append(float(loss))
        params = jax.tree.map(lambda p, g: p - 0.5 * g, params, grads)
    assert losses[-1] < 0.9 * losses[0], losses
