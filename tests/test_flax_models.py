"""cnnjax.flax_models: pure == linen == nnx (logits, loss, gradients) from the same params, and
the param converters are exact."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cnnjax import flax_models, losses, models
from cnnjax.models import AvgPool, Conv, Dense, Flatten, MaxPool, ReLU

# float32 eps is 1.2e-7. Pure and Flax run the same lax ops, but XLA may sum in another order
# (vmapped examples vs one batched op); reordering a sum of n terms moves it by ~sqrt(n) eps of
# its scale. The largest sum here is the reference net's dense1 (1600 inputs, ~5e-6 relative);
# conv sums grow with kh*kw*C (at most 3*3*32 = 288 here). 2e-5 of the largest |value| covers
# that, while a layout or padding mistake shows up at ~1e-1 of the scale. (On CPU XLA the paths
# are often bitwise equal; the tests do not rely on it.)
RTOL = 2e-5

BATCH = 3

# name -> (spec, input_shape). Odd sizes, so "SAME" must put its odd pad row at the bottom and
# a pool with count_include_pad=False meets windows with fewer real inputs. Each spec covers
# several features, because every spec costs a few XLA compiles.
SPECS = {
    "reference": (models.REFERENCE_CNN, models.REFERENCE_INPUT_SHAPE),
    "stride2_same_avg_exclude": (
        (
            Conv(4, 3, stride=2, padding="SAME"),
            ReLU(),
            Conv(3, (2, 3), stride=(2, 1)),
            AvgPool(3, stride=2, padding="SAME", count_include_pad=False),
            Flatten(),
            Dense(5),
        ),
        (13, 12, 2),
    ),
    "explicit_pad_overlapping_max": (
        (
            Conv(4, (3, 2), padding=((1, 0), (2, 1))),
            ReLU(),
            MaxPool(3, stride=2),
            Conv(3, 1),
            MaxPool(2, stride=1, padding="SAME"),
            Flatten(),
            Dense(4, name="head"),
        ),
        (11, 10, 3),
    ),
    "avg_include_pad": (
        (
            Conv(3, 3, padding="SAME"),
            AvgPool(2, padding=((1, 1), (0, 1)), count_include_pad=True),
            ReLU(),
            Flatten(),
            Dense(6),
            ReLU(),
            Dense(3),
        ),
        (5, 7, 1),
    ),
}


def assert_close(got, want, what: str):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    tol = RTOL * float(np.max(np.abs(want), initial=0.0))
    diff = float(np.max(np.abs(got - want), initial=0.0))
    assert diff <= tol, f"{what}: max |diff| {diff:.3g} > tolerance {tol:.3g}"


def assert_tree_close(got, want, what: str):
    assert jax.tree.structure(got) == jax.tree.structure(want), what
    for (path, g), w in zip(jax.tree.leaves_with_path(got), jax.tree.leaves(want), strict=True):
        assert_close(g, w, f"{what}{jax.tree_util.keystr(path)}")


def assert_tree_equal(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


@functools.cache
def make_case(name):
    spec, input_shape = SPECS[name]
    seed = sum(map(ord, name))
    # An "rbg" key compiles several times faster than threefry on CPU (compiles dominate this
    # file); any key will do, the params only need to be the ones models.init makes.
    init_key = jax.random.key(seed, impl="rbg")
    params = jax.jit(models.init, static_argnums=(1, 2))(init_key, spec, input_shape)
    rng = np.random.default_rng(seed)
    x_NHWC = jnp.asarray(rng.standard_normal((BATCH, *input_shape), np.float32))
    num_classes = models.output_shapes(spec, input_shape)[-1][0]
    labels_N = jnp.asarray(rng.integers(0, num_classes, BATCH), jnp.int32)
    return spec, input_shape, params, x_NHWC, labels_N


@pytest.fixture(params=list(SPECS))
def case(request):
    return make_case(request.param)


def test_flax_init_builds_the_pure_tree(case):
    spec, input_shape, params, x_NHWC, _ = case
    want = jax.tree.map(jnp.shape, params)
    # shapes only, so both inits run abstractly (no compiles)
    linen_vars = jax.eval_shape(flax_models.LinenCNN(spec).init, jax.random.key(0), x_NHWC)
    assert jax.tree.map(jnp.shape, flax_models.linen_to_pure(linen_vars)) == want
    module = nnx.eval_shape(lambda: flax_models.NnxCNN(spec, input_shape, rngs=nnx.Rngs(0)))
    assert jax.tree.map(jnp.shape, flax_models.nnx_to_pure(module)) == want


def test_round_trips_are_exact(case):
    spec, input_shape, params, _, _ = case
    assert_tree_equal(flax_models.linen_to_pure(flax_models.pure_to_linen(params)), params)
    module = flax_models.pure_to_nnx(params, spec, input_shape)
    assert_tree_equal(flax_models.nnx_to_pure(module), params)


def test_logits_loss_and_grads_agree(case):
    spec, _, params, x_NHWC, labels_N = case
    values = flax_models.flax_values(params, spec, x_NHWC, labels_N)
    logits, loss, grads, _ = values["pure"]
    num_classes = models.output_shapes(spec, x_NHWC.shape[1:])[-1][0]
    assert logits.shape == (BATCH, num_classes)
    for framework in ("linen", "nnx"):
        f_logits, f_loss, f_grads, _ = values[framework]
        assert_close(f_logits, logits, f"{framework} logits")
        assert_close(f_loss, loss, f"{framework} loss")
        assert_tree_close(f_grads, grads, f"{framework} grad")


def test_direct_flax_calls_agree():
    """The way a Flax user calls them, jitted: linen apply + jax.grad, nnx call + nnx.grad;
    against models.batch_logits, models.loss and jax.grad of it (not via flax_values)."""
    spec, input_shape, params, x_NHWC, labels_N = make_case("stride2_same_avg_exclude")

    @jax.jit
    def pure(p):
        loss, grads = jax.value_and_grad(models.loss)(p, x_NHWC, labels_N, spec)
        return models.batch_logits(p, x_NHWC, spec), loss, grads

    @jax.jit
    def linen(variables):
        def loss_fn(v):
            logits = flax_models.LinenCNN(spec).apply(v, x_NHWC)
            return jnp.mean(losses.cross_entropy(logits, labels_N)), logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables)
        return logits, loss, flax_models.linen_to_pure(grads)

    @nnx.jit
    def nnx_path(module):
        def loss_fn(m):
            return jnp.mean(losses.cross_entropy(m(x_NHWC), labels_N))

        return module(x_NHWC), loss_fn(module), nnx.grad(loss_fn)(module)

    want_logits, want_loss, want_grads = pure(params)
    logits, loss, grads = linen(flax_models.pure_to_linen(params))
    assert_close(logits, want_logits, "linen logits")
    assert_close(loss, want_loss, "linen loss")
    assert_tree_close(grads, want_grads, "linen grad")
    logits, loss, grads = nnx_path(flax_models.pure_to_nnx(params, spec, input_shape))
    assert_close(logits, want_logits, "nnx logits")
    assert_close(loss, want_loss, "nnx loss")
    assert_tree_close(flax_models.nnx_to_pure(grads), want_grads, "nnx grad")


def test_parity_report_passes_on_the_reference_net():
    spec, _, params, x_NHWC, labels_N = make_case("reference")
    rows = flax_models.parity_report(params, spec, x_NHWC, labels_N)
    leaves = len(jax.tree.leaves(params))
    assert len(rows) == 2 * (2 + leaves)
    assert all(row.passed for row in rows), [row for row in rows if not row.passed]


def test_parity_report_catches_a_planted_layout_bug(monkeypatch):
    """Planted bug: the linen converter flips conv1's kernel spatially (a cross-correlation vs
    convolution mix-up). The linen rows must fail; the nnx rows must still pass."""
    spec, _, params, x_NHWC, labels_N = make_case("stride2_same_avg_exclude")
    honest = flax_models.pure_to_linen

    def flipped(p, state=None):
        variables = honest(p, state)
        kernel = variables["params"]["conv1"]["kernel"]
        variables["params"]["conv1"] = {**variables["params"]["conv1"], "kernel": kernel[::-1]}
        return variables

    monkeypatch.setattr(flax_models, "pure_to_linen", flipped)
    rows = flax_models.parity_report(params, spec, x_NHWC, labels_N)
    failed = {(row.framework, row.quantity) for row in rows if not row.passed}
    assert ("linen", "logits") in failed and ("linen", "grad conv1/kernel") in failed
    assert not any(framework == "nnx" for framework, _ in failed)


def test_the_parity_table_shows_every_row_and_counts_the_passes():
    rows = [
        flax_models.ParityRow("nnx", "logits", 1.5e-7, 2e-6, True),
        flax_models.ParityRow("linen", "grad conv1/kernel", 3e-3, 2e-6, False),
    ]
    lines = flax_models.format_parity(rows).splitlines()
    assert lines[0].split() == ["framework", "quantity", "max", "|diff|", "tolerance", "result"]
    assert lines[1].split() == ["nnx", "logits", "1.500e-07", "2.000e-06", "PASS"]
    assert lines[2].split() == ["linen", "grad", "conv1/kernel", "3.000e-03", "2.000e-06", "FAIL"]
    assert lines[3] == "1/2 passed"


def test_flax_pool_default_stride_is_not_the_window():
    """Why the pools' Flax counterparts pass the stride explicitly: Flax defaults it to 1, the
    spec to the window. Without it the reference net's flatten would not have 1600 features."""
    x_NHWC = jnp.ones((1, 26, 26, 1))
    assert nn.max_pool(x_NHWC, (2, 2)).shape == (1, 25, 25, 1)
    assert MaxPool(2).flax(x_NHWC, train=False).shape == (1, 13, 13, 1)


def test_pure_to_nnx_rejects_params_of_another_spec():
    spec, input_shape, _, _, _ = make_case("stride2_same_avg_exclude")
    params = make_case("reference")[2]
    with pytest.raises(ValueError, match="do not fit the spec"):
        flax_models.pure_to_nnx(params, spec, input_shape)


def test_flax_modules_reject_a_single_example():
    spec, input_shape, params, x_NHWC, _ = make_case("stride2_same_avg_exclude")
    with pytest.raises(ValueError, match="batch x_NHWC"):
        flax_models.pure_to_nnx(params, spec, input_shape)(x_NHWC[0])


@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool_keeps_the_input_dtype_under_x64(count_include_pad):
    """Flax's avg_pool divides by counts built with jnp.ones (float64 under x64); the wrapper
    must return float32 for float32 input, as ops.avg_pool does."""
    layer = AvgPool(2, padding="SAME", count_include_pad=count_include_pad)
    x_NHWC = jnp.ones((1, 3, 3, 1), jnp.float32)
    with jax.enable_x64(True):
        assert layer.flax(x_NHWC, train=False).dtype == jnp.float32
