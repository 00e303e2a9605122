"""Tanh and GELU: the hand-derived vjps vs autodiff and finite differences, the forwards vs
jax.nn's and Flax's, and the HAND_DERIVED twins inside a network."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import gradcheck
from cnnjax.layers import GELU, Conv, Dense, Flatten, Tanh
from tests.layers import checks

KINDS = [Tanh(), GELU(approximate=True), GELU(approximate=False)]
# float32 forwards that compute the same formula in a different order: a few eps32 (1.2e-7) of
# the output's scale.
TOL_FLOAT32 = 1e-6


@pytest.mark.parametrize("layer", KINDS, ids=repr)
@pytest.mark.parametrize("seed", range(3))
def test_vjp_matches_autodiff_and_finite_differences(layer, seed):
    shape = np.random.default_rng(seed).integers(1, 6, 3)
    gradcheck.assert_layer(layer, tuple(int(n) for n in shape), dtypes="float64", seed=seed)


def test_gradcheck_cases_pass():
    for kind in (Tanh, GELU):
        for seed in range(2):
            for case in kind.gradcheck_cases(np.random.default_rng(seed)):
                gradcheck.assert_layer(case.layer, case.in_shape, dtypes="float64", seed=seed)


@dataclasses.dataclass(frozen=True)
class _WrongTanh(Tanh):
    def vjp(self, p, x, dy, ctx):
        return dy * (1 - jnp.tanh(x)), {}  # planted: tanh' is 1 - tanh^2


@dataclasses.dataclass(frozen=True)
class _WrongGELU(GELU):
    def vjp(self, p, x, dy, ctx):  # planted: Phi(x) alone, the product rule's x phi(x) lost
        return dy * (1 + jnp.tanh(jnp.sqrt(2 / jnp.pi) * (x + 0.044715 * x**3))) / 2, {}


@pytest.mark.parametrize("layer", [_WrongTanh(), _WrongGELU()], ids=repr)
def test_the_check_fails_a_wrong_rule(layer):
    rows = gradcheck.check_layer(layer, (4, 3, 2), dtypes="float64")
    name = type(layer).__name__
    assert {r.check for r in rows if not r.passed} == {f"{name}/dx vs autodiff", f"{name}/dx vs fd"}


@pytest.mark.parametrize("approximate", [True, False])
def test_gelu_is_jax_nn_gelu(approximate):
    with jax.enable_x64(True):
        x = jnp.linspace(-6.0, 6.0, 241)
        y = GELU(approximate=approximate).apply({}, x, None)
        assert checks.rel_err(y, jax.nn.gelu(x, approximate=approximate)) <= 1e-15
        # the two forms differ (by ~1e-4 of the scale), so the flag is honoured
        assert checks.rel_err(y, jax.nn.gelu(x, approximate=not approximate)) > 1e-5


@pytest.mark.parametrize("layer", KINDS, ids=repr)
def test_flax_counterpart_equals_the_layer(layer):
    x_NHWC = jax.random.normal(jax.random.key(0), (2, 5, 4, 3))
    want = jax.vmap(lambda x: layer.apply({}, x, None))(x_NHWC)
    assert checks.rel_err(layer.flax(x_NHWC, train=False), want) <= TOL_FLOAT32


def test_backprop_and_the_twins_in_a_network_equal_autodiff():
    spec = (Conv(3, 3), Tanh(), Conv(2, 2), GELU(), Flatten(), GELU(False), Dense(4))
    rows = gradcheck.check_network(spec, (6, 5, 2), np.random.default_rng(0), "float64")
    assert "net/conv1/kernel custom_vjp vs autodiff" in {r.check for r in rows}
    assert all(r.passed for r in rows), gradcheck.format_table(rows)
