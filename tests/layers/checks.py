"""A layer's hand-derived vjp against autodiff and central finite differences, in float64, for
the layer tests (a small stand-in for a public gradcheck.assert_vjp).

Error: max|a - b| / max|b|, b the reference (relative to the gradient's scale; a wrong rule is
off by O(1)). Tolerances: vs jax.vjp of the plain forward 1e-10 (the two sum the same terms in
different orders, ~1e-15 measured); vs FD 1e-5 (h = 1e-6: truncation ~h^2 = 1e-12, rounding
~eps64 |f| / h ~ 2e-10 |f|, so ~1e-7 for a gradient 1e-3 of f's scale).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.layers import EVAL

TOL_AUTODIFF, TOL_FD, FD_STEP, FD_DIRECTIONS = 1e-10, 1e-5, 1e-6, 3


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.max(np.abs(got - want), initial=0.0) / max(np.max(np.abs(want)), 1e-300))


def tree_err(got, want) -> float:
    assert jax.tree.structure(got) == jax.tree.structure(want), (got, want)
    leaves = zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)
    return max([rel_err(g, w) for g, w in leaves] or [0.0])


def vjp_errors(layer, in_shape, seed=0, ctx=EVAL) -> dict[str, float]:
    """{"autodiff": error of (dx, dparams), "fd": error of <grads, v> along random directions}
    for one example of `in_shape`, in float64 (x64 on only meanwhile)."""
    rng = np.random.default_rng(seed)
    forward = lambda p, x: layer.apply(p, x, ctx)  # noqa: E731

    @jax.jit
    def rules(p, x, dy):
        return layer.vjp(p, x, dy, ctx), jax.vjp(forward, p, x)[1](dy)

    @jax.jit
    def along(p, x, dy, v_p, v_x, t):  # <dy, forward> at (p, x) + t (v_p, v_x)
        return jnp.vdot(dy, forward(jax.tree.map(lambda a, v: a + t * v, p, v_p), x + t * v_x))

    with jax.enable_x64(True):
        p = layer.init(jax.random.key(seed), tuple(in_shape), jnp.float64)
        x = jnp.asarray(rng.standard_normal(in_shape))
        dy = jnp.asarray(rng.standard_normal(layer.output_shape(tuple(in_shape))))
        (dx, dp), (dp_ad, dx_ad) = rules(p, x, dy)
        autodiff = max(rel_err(dx, dx_ad), tree_err(dp, dp_ad))
        fd, analytic = [], []
        for _ in range(FD_DIRECTIONS):
            v_p = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape)), p)
            v_x = jnp.asarray(rng.standard_normal(in_shape))
            f = [float(along(p, x, dy, v_p, v_x, t)) for t in (FD_STEP, -FD_STEP)]
            fd.append((f[0] - f[1]) / (2 * FD_STEP))
            pairs = zip(jax.tree.leaves(dp), jax.tree.leaves(v_p), strict=True)
            dots = [jnp.vdot(g, v) for g, v in pairs]
            analytic.append(float(jnp.vdot(dx, v_x) + sum(dots)))
    return {"autodiff": autodiff, "fd": rel_err(analytic, fd)}


def assert_vjp(layer, in_shape, seed=0, ctx=EVAL):
    errors = vjp_errors(layer, in_shape, seed, ctx)
    assert errors["autodiff"] <= TOL_AUTODIFF and errors["fd"] <= TOL_FD, (layer, errors)
