"""Gradient checks: a hand-derived VJP vs jax autodiff vs finite differences, for any function
(`check_vjp`, `assert_vjp`, `check_custom_vjp`: gradcheck.engine) and, on that engine, for every
layer kind and whole networks (`check_layer`, `check_network`: gradcheck.suite), planned as
groups that run in one process or several (`groups`: gradcheck.plan); the report rows, table and
summary (gradcheck.report).

Every check returns report `Row`s. Three references, each for what it can prove:

* autodiff (jax.vjp of f; for the built-in rules the plain op of cnnjax.ops / cnnjax.losses),
  float32 and float64.
* central finite differences (FD), float64 only: independent of every jax derivative rule.
  Directional: for random v and dy, f(t) = <dy, op(x + t v)>, (f(h) - f(-h)) / 2h ~ <VJP(dy), v>
  checks the whole VJP in two evaluations. Inputs are continuous (no ties), but a network has so
  many ReLUs and windows that a kink (a ReLU input or an arg-max gap) may lie within a step; FD
  at h and at h / 4 then disagree, so each direction uses the largest step of FD_STEPS where
  they agree, or is dropped. That choice looks at f alone, never at the rule under test.
  FD in float32 is useless: rounding alone is eps32 |f| / h ~ 1e-4 relative at h = 1e-3, and a
  larger h only meets more kinks.
* tie-heavy inputs (small integers, zero plateaus as ReLU makes), autodiff only: the function is
  not differentiable there and the rule is a policy (the first arg-max in row-major window order
  takes the error; ReLU'(0) = 0), so FD means nothing. dy is small integers too, so every sum is
  exact and float64 must agree bit for bit.

Error: max|a - b| / max(max|b|, tiny), b the reference: relative to the reference's scale, as
elementwise relative error is meaningless near the zeros gradients are full of. A wrong rule is
off by the gradient's own scale, O(1). Tolerances on it (reasons and measured maxima at the
constants below): hand vs autodiff 1e-4 in float32, 1e-10 in float64; tie-heavy 1e-4 in float32,
exact (0) in float64; FD (float64) 1e-5. Rules under test must be traceable: each check is a jit.
Every check runs at the highest matmul precision on every backend (`ops.highest_precision`):
the float32 tolerances above assume float32 arithmetic, which GPUs (TF32) and TPUs (bfloat16
passes) do not give by default.

Checking your own rule: `vjp(*args, dy)` returns one cotangent per arg (pytrees, like a params
dict, welcome); labels and other integer inputs are closed over (functools.partial). In a test:

    def softplus(x): return jnp.logaddexp(x, 0.0)
    def softplus_vjp(x, dy): return dy * jax.nn.sigmoid(x)
    x = np.random.default_rng(0).standard_normal((3, 4))
    gradcheck.assert_vjp(softplus, softplus_vjp, x, name="softplus")  # float32, float64, FD

A failure raises AssertionError with the table of the failing rows ("softplus/arg0 vs fd").
For a piecewise-linear op (a ReLU, a max), `data="plateaus"` or "integers" also checks its
policy at the kinks, exactly. `check_vjp` returns the rows instead of raising;
`check_custom_vjp(f, *args)` checks a jax.custom_vjp's rule against its undecorated function.
"""

from cnnjax.gradcheck.engine import (
    FD_DIRECTIONS,
    FD_STEPS,
    TIE_KINDS,
    TOL_AUTODIFF,
    TOL_FD,
    TOL_TIES,
    assert_custom_vjp,
    assert_vjp,
    check_custom_vjp,
    check_vjp,
)
from cnnjax.gradcheck.plan import Group, groups, plan, run_all
from cnnjax.gradcheck.report import Row, aggregate, format_table, progress_line, summary
from cnnjax.gradcheck.suite import (
    assert_layer,
    check_cross_entropy,
    check_kind,
    check_layer,
    check_network,
    layer_checks,
    random_spec,
)

__all__ = [
    "FD_DIRECTIONS",
    "FD_STEPS",
    "TIE_KINDS",
    "TOL_AUTODIFF",
    "TOL_FD",
    "TOL_TIES",
    "Group",
    "Row",
    "aggregate",
    "assert_custom_vjp",
    "assert_layer",
    "assert_vjp",
    "check_cross_entropy",
    "check_custom_vjp",
    "check_kind",
    "check_layer",
    "check_network",
    "check_vjp",
    "format_table",
    "groups",
    "layer_checks",
    "plan",
    "progress_line",
    "random_spec",
    "run_all",
    "summary",
]
