"""cnnjax.gradcheck's public check, used as a researcher would on rules of their own: right
rules pass, planted wrong ones raise naming the failing check, malformed results fail cleanly."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import gradcheck

EPS = 1e-5  # layer norm's variance floor


def draws(*shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) for shape in shapes]


def failed(rows) -> set[str]:
    return {row.check for row in rows if not row.passed}


# --------------------------------------------------------------------------- rules of one's own


def softplus(x):
    return jnp.logaddexp(x, 0.0)


def softplus_vjp(x, dy):
    return dy * jax.nn.sigmoid(x)


def test_a_right_rule_passes_in_both_dtypes_against_autodiff_and_fd():
    rows = gradcheck.assert_vjp(softplus, softplus_vjp, *draws((3, 4)), name="softplus")
    assert {(row.check, row.dtype) for row in rows} == {
        ("softplus/arg0 vs autodiff", "float32"),
        ("softplus/arg0 vs autodiff", "float64"),
        ("softplus/arg0 vs fd", "float64"),
    }


def layer_norm(x_ND, params):
    """Each row normalized to mean 0, variance 1, then scaled and shifted per feature."""
    centred = x_ND - x_ND.mean(-1, keepdims=True)
    inv = jax.lax.rsqrt((centred**2).mean(-1, keepdims=True) + EPS)
    return centred * inv * params["scale"] + params["offset"]


def layer_norm_vjp(x_ND, params, dy_ND, *, drop_projection=False):
    """dx = inv (g - mean(g) - xhat mean(g xhat)), g = dy * scale; the last term (the
    variance's dependence on x) left out if drop_projection."""
    centred = x_ND - x_ND.mean(-1, keepdims=True)
    inv = jax.lax.rsqrt((centred**2).mean(-1, keepdims=True) + EPS)
    xhat, g = centred * inv, dy_ND * params["scale"]
    projection = 0.0 if drop_projection else xhat * (g * xhat).mean(-1, keepdims=True)
    dx = inv * (g - g.mean(-1, keepdims=True) - projection)
    return dx, {"scale": (dy_ND * xhat).sum(0), "offset": dy_ND.sum(0)}


def layer_norm_args():
    x, scale, offset = draws((3, 5), (5,), (5,))
    return x, {"scale": scale, "offset": offset}


def test_layer_norm_with_a_params_dict_passes_and_rows_name_each_leaf():
    rows = gradcheck.assert_vjp(
        layer_norm, layer_norm_vjp, *layer_norm_args(), name="layer_norm", argnames=("x", "p")
    )
    leaves = ("layer_norm/x", "layer_norm/p/scale", "layer_norm/p/offset")
    assert {row.check for row in rows} == {
        f"{l} vs {r}" for l in leaves for r in ("autodiff", "fd")
    }


def test_a_missing_term_raises_naming_the_failing_checks():
    rule = functools.partial(layer_norm_vjp, drop_projection=True)
    with pytest.raises(AssertionError) as raised:
        gradcheck.assert_vjp(layer_norm, rule, *layer_norm_args(), name="layer_norm")
    message = str(raised.value)
    for check in ("layer_norm/arg0 vs autodiff", "layer_norm/arg0 vs fd"):
        assert check in message
    assert "arg1/scale" not in message  # only the broken cotangent's rows are listed
    assert "failed" in message.splitlines()[-1]  # the summary closes it


def bilinear(u_NI, v_NJ, p):
    """y_n = u_n W v_n + b."""
    return jnp.einsum("ni,ij,nj->n", u_NI, p["w"], v_NJ) + p["b"]


def bilinear_vjp(u_NI, v_NJ, p, dy_N, *, transposed=False):
    w = p["w"].T if transposed else p["w"]  # transposed: W where W^T belongs (square W fits)
    du = dy_N[:, None] * (v_NJ @ w.T)
    dv = dy_N[:, None] * (u_NI @ p["w"])
    return du, dv, {"w": jnp.einsum("n,ni,nj->ij", dy_N, u_NI, v_NJ), "b": dy_N.sum()}


def bilinear_args():
    u, v, w, b = draws((4, 3), (4, 3), (3, 3), ())
    return u, v, {"w": w, "b": b}


def test_a_two_input_op_with_params_passes():
    rows = gradcheck.assert_vjp(bilinear, bilinear_vjp, *bilinear_args(), name="bilinear")
    assert "bilinear/arg2/b vs fd" in {row.check for row in rows}


def test_a_transposed_matrix_is_caught():
    rule = functools.partial(bilinear_vjp, transposed=True)
    rows = gradcheck.check_vjp(
        bilinear, rule, *bilinear_args(), name="bilinear", argnames=("u", "v", "p")
    )
    assert failed(rows) == {"bilinear/u vs autodiff", "bilinear/u vs fd"}


def relu(x):
    return jnp.where(x > 0, x, 0.0)  # autodiff: slope 0 at 0


def test_a_wrong_tie_policy_is_caught_only_on_plateaus():
    def slope_one_at_zero(x, dy):
        return jnp.where(x >= 0, dy, 0.0)

    x = draws((4, 6))[0]
    gradcheck.assert_vjp(relu, slope_one_at_zero, x, name="relu")  # no exact zeros: passes
    gradcheck.assert_vjp(relu, lambda x, dy: jnp.where(x > 0, dy, 0.0), x, data="plateaus")
    rows = gradcheck.check_vjp(relu, slope_one_at_zero, x, name="relu", data="plateaus")
    assert failed(rows) == {"relu/arg0 vs autodiff, plateaus"}
    (exact,) = [row for row in rows if row.dtype == "float64"]
    assert exact.tolerance == 0.0  # tie-heavy data are small integers: float64 bit for bit
    with pytest.raises(AssertionError, match="relu/arg0 vs autodiff, plateaus"):
        gradcheck.assert_vjp(relu, slope_one_at_zero, x, name="relu", data="plateaus")


def test_nested_params_are_named_by_their_path():
    def f(p):
        return jnp.tanh(p["residual1"]["conv1"]["kernel"]) * p["scale"]

    def f_vjp(p, dy):
        t = jnp.tanh(p["residual1"]["conv1"]["kernel"])
        dkernel = dy * p["scale"] * (1 - t**2)
        return {"residual1": {"conv1": {"kernel": dkernel}}, "scale": jnp.sum(dy * t)}

    kernel, scale = draws((2, 3), ())
    p = {"residual1": {"conv1": {"kernel": kernel}}, "scale": scale}
    rows = gradcheck.assert_vjp(f, f_vjp, p, name="net", argnames=("",), dtypes="float32")
    assert {row.check for row in rows} == {
        "net/residual1/conv1/kernel vs autodiff",
        "net/scale vs autodiff",
    }


# --------------------------------------------------------------------------- jax.custom_vjp


def custom_softplus(bwd):
    @jax.custom_vjp
    def f(x, p):
        return p["scale"] * softplus(x)

    def fwd(x, p):
        return f(x, p), (x, p)

    f.defvjp(fwd, bwd)
    return f


def right_bwd(residuals, dy):
    x, p = residuals
    return dy * p["scale"] * jax.nn.sigmoid(x), {"scale": jnp.sum(dy * softplus(x))}


def forgetful_bwd(residuals, dy):  # the scale's factor forgotten in dx
    x, _ = residuals
    return dy * jax.nn.sigmoid(x), {"scale": jnp.sum(dy * softplus(x))}


def softplus_args():
    x, scale = draws((3, 4), ())
    return x, {"scale": 2.0 + scale}


def test_a_custom_vjp_with_the_right_rule_passes():
    rows = gradcheck.assert_custom_vjp(custom_softplus(right_bwd), *softplus_args(), name="sp")
    assert {"sp/arg0 vs fd", "sp/arg1/scale vs autodiff"} <= {row.check for row in rows}


def test_a_custom_vjp_with_a_wrong_rule_is_caught():
    rows = gradcheck.check_custom_vjp(custom_softplus(forgetful_bwd), *softplus_args())
    assert failed(rows) == {"f/arg0 vs autodiff", "f/arg0 vs fd"}


def test_a_function_wrapping_a_custom_vjp_needs_its_primal():
    inner = custom_softplus(forgetful_bwd)

    def wrapped(x, p):
        return inner(x, p) + 1.0

    with pytest.raises(ValueError, match="primal="):
        gradcheck.check_custom_vjp(wrapped, *softplus_args())
    rows = gradcheck.check_custom_vjp(
        wrapped, *softplus_args(), primal=lambda x, p: p["scale"] * softplus(x) + 1.0
    )
    assert failed(rows) == {"f/arg0 vs autodiff", "f/arg0 vs fd"}


# --------------------------------------------------------------------------- malformed results


def test_a_cotangent_of_the_wrong_shape_fails_its_rows():
    rows = gradcheck.check_vjp(softplus, lambda x, dy: softplus_vjp(x, dy)[0], *draws((3, 4)))
    assert failed(rows) == {"f/arg0 vs autodiff", "f/arg0 vs fd"}
    assert all(row.max_rel_err == np.inf for row in rows if not row.passed)


def test_a_cotangent_of_the_wrong_dtype_fails_in_that_dtype():
    def rule(x, dy):  # float32 whatever the input
        return softplus_vjp(x, dy).astype(jnp.float32)

    rows = gradcheck.check_vjp(softplus, rule, *draws((3, 4)), fd=False)
    assert {(row.dtype, row.passed) for row in rows} == {("float32", True), ("float64", False)}


def test_a_cotangent_pytree_of_another_structure_fails_a_row():
    def params_as_a_tuple(u, v, p, dy):
        du, dv, dp = bilinear_vjp(u, v, p, dy)
        return du, dv, (dp["w"], dp["b"])

    rows = gradcheck.check_vjp(bilinear, params_as_a_tuple, *bilinear_args(), dtypes="float64")
    assert failed(rows) == {"f/arg2 cotangent structure"}
    (row,) = [row for row in rows if not row.passed]
    assert "want PyTreeDef({'b': *, 'w': *})" in row.case
    assert {"f/arg0 vs fd", "f/arg1 vs autodiff"} <= {row.check for row in rows}  # still checked

    def one_short(u, v, p, dy):
        return bilinear_vjp(u, v, p, dy)[:2]

    rows = gradcheck.check_vjp(bilinear, one_short, *bilinear_args(), dtypes="float32")
    assert [row.check for row in rows] == ["f cotangent structure"]
    assert not rows[0].passed and "a tuple of 3" in rows[0].case


@pytest.mark.parametrize("label", [np.array([1, 0, 2]), {"w": np.ones(3), "steps": 3}, True])
def test_integer_and_bool_inputs_are_refused_with_the_fix(label):
    with pytest.raises(ValueError, match=r"arg1.* is (int|bool).*functools\.partial"):
        gradcheck.check_vjp(lambda x, _: x, lambda x, _, dy: (dy, None), np.ones(3), label)


def test_a_closed_over_label_is_the_way():
    labels = np.array([1, 0, 2])

    def pick(z_NK, labels):  # each row's entry at its label
        return jnp.sum(z_NK * jax.nn.one_hot(labels, z_NK.shape[1], dtype=z_NK.dtype), axis=1)

    def pick_vjp(z_NK, dy_N, labels):
        return dy_N[:, None] * jax.nn.one_hot(labels, z_NK.shape[1], dtype=z_NK.dtype)

    gradcheck.assert_vjp(
        functools.partial(pick, labels=labels),
        functools.partial(pick_vjp, labels=labels),
        *draws((3, 4)),
    )


def test_bad_data_and_dtypes_are_refused():
    with pytest.raises(ValueError, match="plateaus"):
        gradcheck.check_vjp(softplus, softplus_vjp, np.ones(3), data="ties")
    with pytest.raises(ValueError, match="float16"):
        gradcheck.check_vjp(softplus, softplus_vjp, np.ones(3), dtypes=("float16",))


def test_x64_is_left_disabled_even_after_a_failure():
    with pytest.raises(AssertionError):
        gradcheck.assert_vjp(softplus, lambda x, dy: 2 * dy, np.ones(3), dtypes="float64")
    assert jnp.zeros(1).dtype == jnp.float32
