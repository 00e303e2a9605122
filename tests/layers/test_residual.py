"""Residual: shapes, names and params of its two paths, its vjp against autodiff and finite
differences, whole-network backprop and the HAND_DERIVED twin through it (identity skip,
projection, nested), its state, and its Flax counterparts."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import backprop, flax_models, gradcheck, models
from cnnjax.layers import (
    BATCH,
    Context,
    Conv,
    Dense,
    Flatten,
    GlobalAvgPool,
    Layer,
    MaxPool,
    ReLU,
    Residual,
)
from tests.layers import checks

SPECS = {
    "identity": (Conv(3, 3, 1, "SAME"), Residual([Conv(3, 3, 1, "SAME"), ReLU()]), Flatten()),
    "projection": (Residual([Conv(4, 3, 2, "SAME"), ReLU(), Conv(4, 1)]), GlobalAvgPool()),
    "nested": (
        Residual([Residual([Conv(2, 3, 1, "SAME"), ReLU()]), Conv(5, 2, 2)]),
        ReLU(),
        Residual([Conv(5, 1), ReLU()], name="block"),
        GlobalAvgPool(),
    ),
}
INPUT_SHAPE = (7, 6, 2)


def network(name):
    return (*SPECS[name], Dense(4))


@pytest.mark.parametrize("seed", range(2))
def test_gradcheck_cases_match_autodiff_and_finite_differences(seed):
    for case in Residual.gradcheck_cases(np.random.default_rng(seed)):
        kw = dict(batch=case.batch, train=case.train, dtypes="float64", seed=seed)
        gradcheck.assert_layer(case.layer, case.in_shape, **kw)


def test_the_check_fails_a_residual_without_its_skip_gradient():
    @dataclasses.dataclass(frozen=True)
    class NoSkipGradient(Residual):
        def vjp(self, p, x, dy, ctx):
            dx, dp = super().vjp(p, x, dy, ctx)
            return dx - dy, dp  # planted: the identity's dy forgotten

    rows = gradcheck.check_layer(NoSkipGradient([Conv(2, 3, 1, "SAME")]), (4, 5, 2))
    failed = {r.check for r in rows if not r.passed}
    assert {"NoSkipGradient/dx vs autodiff", "NoSkipGradient/dx vs fd"} <= failed


@pytest.mark.parametrize("name", list(SPECS))
def test_backprop_and_the_twin_equal_autodiff(name):
    spec = network(name)
    with jax.enable_x64(True):
        params = models.init(jax.random.key(0), spec, INPUT_SHAPE, jnp.float64)
        x = jax.random.normal(jax.random.key(1), (3, *INPUT_SHAPE), jnp.float64)
        labels = jnp.array([0, 3, 1])

        def grad(fns):
            return jax.jit(jax.grad(lambda p: models.loss(p, x, labels, spec, fns=fns)))(params)

        want = grad(models.PLAIN)
        by_backprop = jax.jit(lambda p: backprop.backprop(p, x, labels, spec).grads)(params)
        assert checks.tree_err(by_backprop, want) <= gradcheck.TOL_AUTODIFF["float64"]
        assert checks.tree_err(grad(models.HAND_DERIVED), want) <= gradcheck.TOL_AUTODIFF["float64"]


def test_shapes_names_and_param_counts_by_hand():
    spec = (
        Conv(4, 3, 1, "SAME"),  # 3*3*3*4 + 4 = 112
        Residual([Conv(4, 3, 1, "SAME"), ReLU(), Conv(4, 3, 1, "SAME")]),  # 2 * (144 + 4) = 296
        Residual([Conv(8, 3, 2, "SAME"), ReLU()]),  # 288 + 8, projection 1*1*4*8 + 8: 336
        GlobalAvgPool(),
        Dense(10),  # 8*10 + 10 = 90
    )
    assert models.output_shapes(spec, (8, 8, 3)) == [(8, 8, 4), (8, 8, 4), (4, 4, 8), (8,), (10,)]
    params = jax.eval_shape(lambda: models.init(jax.random.key(0), spec, (8, 8, 3)))
    assert set(params) == {"conv1", "residual1", "residual2", "dense1"}
    assert set(params["residual1"]) == {"conv1", "conv2"}
    assert jax.tree.map(jnp.shape, params["residual2"]) == {
        "conv1": {"kernel": (3, 3, 4, 8), "bias": (8,)},
        "projection": {"kernel": (1, 1, 4, 8), "bias": (8,)},
    }
    assert models.num_params(params) == 112 + 296 + 336 + 90
    rows = {line.split()[0]: line.split() for line in models.summary(spec, (8, 8, 3)).splitlines()}
    assert rows["residual1"][-1] == "296" and rows["residual2"][-1] == "336"
    assert rows["residual2"][1:4] == ["(4,", "4,", "8)"] and rows["total"][-1] == "834"


@pytest.mark.parametrize(
    ("body", "stride"),
    [
        ([Conv(4, 3, 2, "SAME")], (2, 2)),  # 7 -> 4
        ([Conv(4, 3, 2)], (3, 3)),  # 7 -> 3 (VALID): (7 - 1) // 3 + 1 = 3
        ([MaxPool((2, 1)), Conv(4, 1)], (3, 1)),  # 7 -> 3 rows: (7 - 1) // 2 + 1 = 4, so 3
    ],
)
def test_the_projection_stride_is_inferred(body, stride):
    skip = Residual(body).skip((7, 7, 2))
    assert skip == Conv(4, 1, stride)


def test_shapes_no_1x1_projection_can_match_need_an_explicit_one():
    layer = Residual([Conv(3, 2)])  # 5 -> 4: (5 - 1) // s + 1 is 5, 3, 2, 1
    with pytest.raises(ValueError, match="pass projection="):
        layer.output_shape((5, 5, 3))
    explicit = Residual([Conv(3, 2)], projection=Conv(3, 2))
    assert explicit.output_shape((5, 5, 3)) == (4, 4, 3)
    gradcheck.assert_layer(explicit, (5, 5, 3), dtypes="float64")
    with pytest.raises(ValueError, match="not to the body's"):
        Residual([Conv(3, 2)], projection=Conv(3, 1)).output_shape((5, 5, 3))


def test_a_flat_body_gets_a_dense_projection_and_bad_bodies_are_refused():
    assert Residual([Dense(3)]).skip((5,)) == Dense(3)
    assert Residual([Dense(5)]).skip((5,)) is None
    with pytest.raises(ValueError, match="no 1x1 convolution"):
        Residual([Flatten()]).output_shape((2, 2, 1))
    with pytest.raises(ValueError, match="one or more layers"):
        Residual([])
    with pytest.raises(TypeError, match="Layer descriptions"):
        Residual([Conv(2, 1), "relu"])
    with pytest.raises(ValueError, match="may not be named"):
        Residual([Conv(2, 3, 2, name="projection")]).output_shape((6, 6, 1))


def test_a_config_list_body_is_a_hashable_tuple():
    a, b = Residual([Conv(2, 1), ReLU()]), Residual((Conv(2, 1), ReLU()))
    assert a == b and hash(a) == hash(b) and isinstance(a.body, tuple)


@dataclasses.dataclass(frozen=True)
class _BatchMean(Layer):
    """A stateful layer for these tests: passes x on, keeps the batch's channel means."""

    prefix = "stat"

    def output_shape(self, in_shape):
        return tuple(in_shape)

    def init_state(self, in_shape, dtype):
        return {"mean": jnp.zeros(in_shape[-1:], dtype)}

    def apply(self, p, x, ctx):
        return x

    def next_state(self, p, x, ctx):
        return {"mean": jax.lax.pmean(jnp.mean(x, axis=(0, 1)), BATCH)}

    def vjp(self, p, x, dy, ctx):
        return dy, {}


def test_a_body_state_is_the_residual_state():
    assert not Residual([Conv(2, 1)]).has_state()
    layer = Residual([Conv(2, 1, name="c"), _BatchMean()])
    assert layer.has_state() and dataclasses.replace(layer) == layer
    spec = (layer, Flatten(), Dense(2))
    state = models.init_state(spec, (3, 3, 2))
    assert jax.tree.map(jnp.shape, state) == {"residual1": {"stat1": {"mean": (2,)}}}
    params = models.init(jax.random.key(0), spec, (3, 3, 2))
    x = jax.random.normal(jax.random.key(1), (4, 3, 3, 2))
    _, new_state = models.batch_apply(params, x, spec, state=state, train=True)
    conv_x = jax.vmap(lambda x: Conv(2, 1).apply(params["residual1"]["c"], x, Context()))(x)
    want = jnp.mean(conv_x, axis=(0, 1, 2))
    np.testing.assert_allclose(new_state["residual1"]["stat1"]["mean"], want, rtol=1e-6)
    out = backprop.backprop(params, x, jnp.array([0, 1, 1, 0]), spec, state=state, train=True)
    np.testing.assert_allclose(out.state["residual1"]["stat1"]["mean"], want, rtol=1e-6)
    # a stateless residual needs no state at all
    plain = (Residual([Conv(2, 1)]), Flatten())
    assert models.init_state(plain, (3, 3, 2)) == {}
    models.apply(models.init(jax.random.key(0), plain, (3, 3, 2)), x[0], plain)


def test_flax_counterparts_agree():
    spec = network("nested")  # an identity skip, a projection, a Residual in a Residual
    params = models.init(jax.random.key(0), spec, INPUT_SHAPE)
    x = jax.random.normal(jax.random.key(1), (3, *INPUT_SHAPE))
    values = flax_models.flax_values(params, spec, x, jnp.array([0, 3, 1]))
    logits, _, grads, _ = values["pure"]
    for framework in ("linen", "nnx"):
        f_logits, _, f_grads, _ = values[framework]
        # float32 sums in another order: a few eps32 times sqrt(terms) of the scale
        assert checks.rel_err(f_logits, logits) <= 2e-5
        assert checks.tree_err(f_grads, grads) <= 2e-5
