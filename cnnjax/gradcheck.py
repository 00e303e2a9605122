"""Gradient checks: a hand-derived VJP vs jax autodiff vs finite differences, for any function
(`check_vjp`, `assert_vjp`, `check_custom_vjp`) and, on that engine, for every rule of cnnjax.grads
and cnnjax.backprop. Past 350 lines because the public check, the layer checks and the
whole-network checks share one engine (the data, the FD steps, the comparison against a
tolerance) and its constants.

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

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import backprop, grads, layers, losses, models, ops
from cnnjax.output import tables

# Hand vs autodiff. float32: the two sides sum in different orders, each rounding ~eps32 sqrt(n)
# for n terms, compounding layer by layer, and cancellation (a bias gradient sums every position,
# of both signs) magnifies it against a small result. Measured max 7e-6 in the default run
# (1.4e-5 over 100 random specs, seed 1); 1e-4 (~800 eps32) keeps ~10x. float64: measured max
# 3e-15 (1.4e-14); 1e-10 keeps 10^4x. Both lie far below the O(1) error of a wrong rule.
TOL_AUTODIFF = {"float32": 1e-4, "float64": 1e-10}
# Tie-heavy data and errors are small integers: float64 is exact, so the policy must match bit
# for bit; float32 gets the ordinary autodiff tolerance.
TOL_TIES = {"float32": TOL_AUTODIFF["float32"], "float64": 0.0}
# FD, float64, h = 1e-5: truncation O(h^2 |f'''|) ~ 1e-10 (and the h vs h / 4 agreement below
# bounds it), rounding O(eps64 |f| / h) ~ 2e-11 |f| absolute, so ~2e-6 relative even for a leaf
# whose gradient is 1e-5 of the loss (BatchNorm's scale in train mode: its per-channel sums
# cancel; at h = 1e-6 such a leaf measured 1.1e-5, its rounding alone). Measured max 8e-8 over
# the default run's networks; 1e-5 keeps >= 100x. The smaller steps serve only directions that
# meet a kink (a few % in REFERENCE_CNN's wide layers).
FD_STEPS, TOL_FD, FD_DIRECTIONS = (1e-5, 1e-6, 1e-7, 1e-8), 1e-5, 3
TIE_KINDS = ("integers", "plateaus")  # rng.integers(-1, 2); relu(normal): half exact zeros
# Every check compiles a fresh shape, so compiling dominates: LLVM optimization buys nothing on
# arrays this small (skipping it halves the run). XLA's algebraic simplifier aborts the process
# on some conv gradients (jax 0.10.2: jax.grad of a conv with x 4x2, kernel 2x4, stride (2, 1),
# padding 1 all round), and random shapes meet them, so it is skipped too. Without it, the CPU
# backend's YNNPACK fusions miscompile what it would have simplified: a broadcast across a size-1
# axis into a reduction (a one-channel BatchNorm under the FD's vmap, jax 0.10.2) comes out wrong
# or crashes, so they are off too (an empty list of YNN fusion types; other backends ignore it).
_COMPILE = {
    "xla_backend_optimization_level": 0,
    "xla_disable_hlo_passes": "algsimp",
    "xla_cpu_experimental_ynn_fusion_type": "",
}


class Row(NamedTuple):
    check: str  # "layer/param vs reference"
    case: str  # the shapes and settings checked
    dtype: str
    max_abs_err: float
    max_rel_err: float  # max|a - b| / max|b|
    tolerance: float  # on max_rel_err
    passed: bool


def _run(compute, *args):
    """compute(*args), jitted at the checks' precision: every dot and convolution HIGHEST
    (ops.highest_precision), so float32 is float32 on GPUs (not TF32) and TPUs (not bf16)."""
    with ops.highest_precision():
        return jax.jit(compute, compiler_options=_COMPILE)(*args)


def _x64(dtype: str):
    """float64 needs x64 enabled, only while a check runs (importing changes no config)."""
    return jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()


def _case(case) -> str:
    if isinstance(case, dict):
        return " ".join(f"{k}={v}".replace(" ", "") for k, v in case.items())
    return str(case)


def _row(check: str, case, dtype: str, got, want, tol: float) -> Row:
    """A rule's result vs the reference's; a wrong shape or dtype, or nothing to compare, fails."""
    same_dtype = getattr(got, "dtype", None) == getattr(want, "dtype", None)
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    abs_err = rel_err = np.inf
    if got.shape == want.shape and want.size and same_dtype:
        abs_err = float(np.max(np.abs(got - want)))
        rel_err = abs_err / max(float(np.max(np.abs(want))), float(np.finfo(dtype).tiny))
    return Row(check, _case(case), dtype, abs_err, rel_err, tol, bool(rel_err <= tol))


def _fd(f, a, v_D):
    """Central differences of the scalar f at a along each v_D[d], at every step h of FD_STEPS
    and at h / 4: shape (steps, 2, D)."""
    h_S2 = np.array([[h, h / 4] for h in FD_STEPS])
    t = jnp.asarray(np.stack([h_S2, -h_S2], axis=-1), a.dtype)  # (steps, 2, +-)
    points = a + t.reshape(*t.shape, 1, *[1] * a.ndim) * v_D
    values = jax.vmap(f)(points.reshape(-1, *a.shape)).reshape(*t.shape, len(v_D))
    return (values[:, :, 0] - values[:, :, 1]) / jnp.asarray(2 * h_S2[..., None], a.dtype)


def _fd_row(check: str, case, v_D, grad, fd_S2D) -> Row:
    """FD (the reference) vs the rule's <grad, v_d>: per direction, at the largest step where
    FD at h and h / 4 agree (no kink inside the step); directions with none are dropped."""
    grad, v_D, fd = (np.asarray(a, np.float64) for a in (grad, v_D, fd_S2D))
    if grad.shape != v_D.shape[1:]:
        return _row(check, case, "float64", grad, v_D[0], TOL_FD)  # a wrong shape fails
    agree_SD = np.abs(fd[:, 0] - fd[:, 1]) <= TOL_FD / 2 * np.max(np.abs(fd[0, 0]))
    fd_D = fd[np.argmax(agree_SD, axis=0), 0, np.arange(len(v_D))]
    kept = agree_SD.any(axis=0)
    analytic = np.tensordot(v_D, grad, grad.ndim)
    return _row(check, case, "float64", analytic[kept], fd_D[kept], TOL_FD)


def _data(rng, shape, kind="continuous") -> np.ndarray:
    """Normal, small integers -1..1, or relu(normal) ("plateaus")."""
    if kind == "integers":
        return rng.integers(-1, 2, shape).astype(np.float64)
    values = rng.standard_normal(shape)
    return np.maximum(values, 0.0) if kind == "plateaus" else values


def _pair(rng, lo: int, hi: int) -> ops.Pair:
    return (int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1)))


def random_padding(rng, max_pad: int = 2) -> ops.Padding:
    choice = ("VALID", "SAME", "explicit")[rng.integers(3)]
    return (_pair(rng, 0, max_pad), _pair(rng, 0, max_pad)) if choice == "explicit" else choice


def random_case(rng, layer: str) -> dict:
    """A "conv2d" or "pool" case: x 3-8 px, 1-3 channels, kernel 1-4 or window 1-3, stride 1-3,
    "VALID", "SAME" or explicit padding; redrawn until the op accepts it."""
    while True:
        x_shape = (*_pair(rng, 3, 8), int(rng.integers(1, 4)))
        stride, padding = _pair(rng, 1, 3), random_padding(rng)
        with contextlib.suppress(ValueError):
            if layer == "conv2d":
                w_shape = (*_pair(rng, 1, 4), x_shape[2], int(rng.integers(1, 4)))
                ops.conv2d_shape(x_shape, w_shape, stride=stride, padding=padding)
                return dict(x_shape=x_shape, w_shape=w_shape, stride=stride, padding=padding)
            window = _pair(rng, 1, 3)
            ops.pool_shape(x_shape, window, stride, padding)
            return dict(x_shape=x_shape, window=window, stride=stride, padding=padding)


# --------------------------------------------------------------------------- any rule


def check_vjp(
    f,
    vjp,
    *args,
    name="f",
    argnames=None,
    case="",
    dtypes=("float32", "float64"),
    data=None,
    seed=0,
    fd=True,
) -> list[Row]:
    """Checks a hand-derived VJP: `vjp(*args, dy)` vs `jax.vjp(f, *args)` at a random dy, and
    in float64 on continuous data vs central finite differences of f along FD_DIRECTIONS
    random directions (`fd=False`: not). Jitted at the highest precision, x64 only meanwhile.

    Args:
      f: the forward, `f(*args)` -> an array or a pytree of floating arrays.
      vjp: `vjp(*args, dy)` -> one cotangent per arg, each shaped like its arg (a pytree if
        the arg is one: `(dx, {"kernel": dw, "bias": db})`), as a tuple; with one arg, the bare
        cotangent. Both must be traceable (jax.numpy, no NumPy on the values).
      args: the differentiated inputs, floating arrays (NumPy or jax) or pytrees of them (a
        params dict), each leaf cast to each dtype. Inputs not differentiated (integer labels,
        shapes, strides) are closed over: `functools.partial(f, labels=labels)` and the same
        for vjp; an integer or bool leaf is a ValueError.
      name, argnames: rows are named "name/argname/path vs autodiff" ("vs fd", "vs autodiff,
        plateaus"); argnames default "arg0", "arg1", ...; path is the leaf's place in a pytree
        arg ("kernel"); an empty part is left out.
      case: the shapes or settings checked (a str or a dict), the rows' `case`.
      dtypes: "float32" and/or "float64".
      data: None to check at the given values; or, for a piecewise-linear op (ReLU, max,
        pooling: integer data keep every sum exact), one of TIE_KINDS ("integers": -1, 0, 1;
        "plateaus": relu(normal), half exact zeros) to check its tie or kink policy: every
        leaf redrawn so, dy small integers, float64 bit-exact (TOL_TIES), no FD.
      seed: an int (every dtype draws the same dy and directions) or a numpy Generator (drawn
        from in turn).

    Returns:
      One Row per leaf of each arg and reference, passed if within TOL_AUTODIFF, TOL_TIES or
      TOL_FD. A cotangent of the wrong shape or dtype fails its row; one of the wrong pytree
      structure fails a "cotangent structure" row (the structures in its `case`).
    """
    hand = _Hand("", lambda *a: (vjp(*a), None), fd)
    kw = dict(name=name, argnames=argnames, case=case, dtypes=dtypes, data=data, seed=seed)
    return _check_dtypes(f, f, hand, args, **kw)


def assert_vjp(f, vjp, *args, **kwargs) -> list[Row]:
    """`check_vjp` for a test: an AssertionError whose message is the table of the failing
    rows and the summary; else the rows."""
    return _assert(check_vjp(f, vjp, *args, **kwargs))


def check_custom_vjp(
    f,
    *args,
    primal=None,
    name="f",
    argnames=None,
    case="",
    dtypes=("float32", "float64"),
    data=None,
    seed=0,
    fd=True,
) -> list[Row]:
    """Checks the rule of `f`, a `jax.custom_vjp` function: `jax.vjp(f, *args)` (its bwd) vs
    jax.vjp of the function without the rule, `f.fun`, and vs FD of f itself. For a function
    that only calls one (a wrapper, a functools.partial), pass `primal=` the same computation
    on plain jax ops. Otherwise as `check_vjp` (jax itself rejects a bwd output of the wrong
    structure or shape, with its own error)."""
    primal = getattr(f, "fun", None) if primal is None else primal
    if primal is None:
        raise ValueError(
            f"{name}: f is not a jax.custom_vjp function (it has no .fun); "
            "pass primal=, the same function without the custom rule"
        )

    def rule(*a):
        return jax.vjp(f, *a[:-1])[1](a[-1]), None

    kw = dict(name=name, argnames=argnames, case=case, dtypes=dtypes, data=data, seed=seed)
    return _check_dtypes(primal, f, _Hand("", rule, fd), args, **kw)


def assert_custom_vjp(f, *args, **kwargs) -> list[Row]:
    """`check_custom_vjp` for a test, raising as `assert_vjp`."""
    return _assert(check_custom_vjp(f, *args, **kwargs))


def _assert(rows: list[Row]) -> list[Row]:
    if failed := [row for row in rows if not row.passed]:
        raise AssertionError(f"\n{format_table(failed)}\n{summary(rows)}")
    return rows


class _Hand(NamedTuple):
    label: str  # after the leaf in its rows' names: "", " hand", " custom_vjp"
    vjp: Callable  # (*args, dy) -> (cotangents, aux: returned by _check, None if unused)
    fd: bool  # vs FD too (float64, continuous data)


def _check_dtypes(reference, forward, hand, args, *, dtypes, seed, **kw) -> list[Row]:
    """_check in each dtype, each from a Generator of `seed` (a Generator: that one)."""
    dtypes = (dtypes,) if isinstance(dtypes, str) else tuple(dtypes)
    if bad := [d for d in dtypes if d not in TOL_AUTODIFF]:
        raise ValueError(f"dtypes {bad}: only {tuple(TOL_AUTODIFF)} are checked")
    rows = []
    for dtype in dtypes:
        rng = np.random.default_rng(seed)
        rows += _check(reference, forward, [hand], args, dtype=dtype, rng=rng, **kw)[0]
    return rows


def _leaf_names(args, name, argnames) -> tuple[list[str], list[str]]:
    """The argnames, and "name/argname/path" per leaf of args in jax's order (empty parts left
    out); a leaf that is not floating is a ValueError."""
    argnames = [f"arg{i}" for i in range(len(args))] if argnames is None else list(argnames)
    if len(argnames) != len(args):
        raise ValueError(f"{name}: {len(argnames)} argnames {argnames} for {len(args)} args")
    names = []
    for (i, *path), leaf in jax.tree_util.tree_flatten_with_path(args)[0]:
        parts = (name, argnames[i.idx], *(_key(k) for k in path))
        names.append("/".join(p for p in parts if p))
        dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(
                f"{names[-1]} is {dtype}: only floating inputs are differentiated; close over "
                "labels, shapes and other constants (functools.partial(f, labels=...), and vjp)"
            )
    return argnames, names


def _key(key) -> str:
    for attribute in ("key", "idx", "name"):  # DictKey, SequenceKey, GetAttrKey
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


class _Where(NamedTuple):  # what rows are named and labelled by
    name: str
    argnames: list[str]
    leaves: list[str]  # "name/argname/path" per leaf, in jax's order
    case: str | dict
    dtype: str
    data: str | None  # one of TIE_KINDS, or None: continuous


def _check(reference, forward, hands, args, *, name, dtype, rng, argnames=None, case="", data=None):
    """Each hand's cotangents vs jax.vjp(reference) at one random dy, and (hand.fd) vs FD of
    `forward`. Returns (rows, the reference's output, each hand's aux). Draws, in order: the
    leaves (if `data`), dy, the FD directions per leaf."""
    if data not in (None, *TIE_KINDS):
        raise ValueError(f"{name}: data={data!r}; pass None or one of {TIE_KINDS}")
    where = _Where(name, *_leaf_names(args, name, argnames), case, dtype, data)
    with _x64(dtype):
        leaves, tree = jax.tree.flatten(args)
        leaves = [_data(rng, np.shape(a), data) if data else a for a in leaves]
        leaves = [jnp.asarray(a, dtype) for a in leaves]
        dy = jax.tree.map(
            lambda y: jnp.asarray(_data(rng, y.shape, data and "integers"), y.dtype),
            jax.eval_shape(reference, *tree.unflatten(leaves)),
        )
        fd_on = dtype == "float64" and not data and any(hand.fd for hand in hands)
        v = [jnp.asarray(_data(rng, (FD_DIRECTIONS, *a.shape)), dtype) for a in leaves if fd_on]

        def compute(leaves, dy, v):
            args = tree.unflatten(leaves)
            y, pullback = jax.vjp(reference, *args)

            def along(k, a):  # <dy, forward(args)> with leaf k at a
                y = forward(*tree.unflatten([*leaves[:k], a, *leaves[k + 1 :]]))
                return sum(jax.tree.leaves(jax.tree.map(jnp.vdot, dy, y)))

            fd = [_fd(functools.partial(along, k), leaves[k], v_D) for k, v_D in enumerate(v)]
            return y, pullback(dy), [hand.vjp(*args, dy) for hand in hands], fd

        y, want, got, fd = _run(compute, leaves, dy, v)
    cotangents = [cotangents for cotangents, _ in got]
    return _rows(hands, args, cotangents, want, fd, v, where), y, [aux for _, aux in got]


def _rows(hands, args, cotangents, want, fd, v, where: _Where) -> list[Row]:
    """Per leaf, each hand's cotangent vs the reference's; then each FD-checked hand's vs FD.
    An arg whose cotangent has another structure fails one row instead of its leaves'."""
    tol = (TOL_AUTODIFF if where.data is None else TOL_TIES)[where.dtype]
    ref = "autodiff" + (f", {where.data}" if where.data else "")
    rows, want, got = [], jax.tree.leaves(want), []
    for hand, c in zip(hands, cotangents, strict=True):
        leaves, mismatches = _cotangent_leaves(c, args)
        got.append(leaves)
        for i, got_tree, want_tree in mismatches:
            arg = "/".join(p for p in (where.name, "" if i is None else where.argnames[i]) if p)
            case = f"{_case(where.case)} got {got_tree}, want {want_tree}".strip()
            check = f"{arg}{hand.label} cotangent structure"
            rows.append(Row(check, case, where.dtype, np.inf, np.inf, tol, False))
    for k, leaf in enumerate(where.leaves):
        for hand, g in zip(hands, got, strict=True):
            if g[k] is not None:
                check = f"{leaf}{hand.label} vs {ref}"
                rows.append(_row(check, where.case, where.dtype, g[k], want[k], tol))
    for hand, g in zip(hands, got, strict=True):
        for k, fd_2D in enumerate(fd if hand.fd else []):
            if g[k] is not None:
                check = f"{where.leaves[k]}{hand.label} vs fd"
                rows.append(_fd_row(check, where.case, v[k], g[k], fd_2D))
    return rows


def _cotangent_leaves(cotangents, args):
    """The cotangents' leaves in args' order, None for those of an arg whose cotangent has
    another structure; and the mismatches: (arg index, or None for the tuple; got; wanted)."""
    if len(args) == 1 and not (isinstance(cotangents, tuple) and len(cotangents) == 1):
        cotangents = (cotangents,)  # one arg: its bare cotangent
    if not isinstance(cotangents, tuple | list) or len(cotangents) != len(args):
        mismatch = (None, jax.tree.structure(cotangents), f"a tuple of {len(args)}")
        return [None] * len(jax.tree.leaves(args)), [mismatch]
    leaves, mismatches = [], []
    for i, (cotangent, arg) in enumerate(zip(cotangents, args, strict=True)):
        got, want = jax.tree.structure(cotangent), jax.tree.structure(arg)
        leaves += jax.tree.leaves(cotangent) if got == want else [None] * want.num_leaves
        mismatches += [] if got == want else [(i, got, want)]
    return leaves, mismatches


# --------------------------------------------------------------------------- layer checks


def _layer(case, rng, dtype, name, argnames=("dx",), kind="continuous") -> dict:
    """check_vjp's keywords for a built-in layer check: one dtype, drawing from `rng`; tie-heavy
    `kind`s redrawn there, so the caller passes placeholders (`_given`)."""
    data = None if kind == "continuous" else kind
    return dict(name=name, argnames=argnames, case=case, dtypes=dtype, data=data, seed=rng)


def _given(rng, shape, kind="continuous") -> np.ndarray:
    """Continuous data drawn now; for a tie-heavy `kind` zeros, which check_vjp redraws."""
    return _data(rng, shape) if kind == "continuous" else np.zeros(shape)


def check_conv2d(case, rng, dtype, rule=grads.conv2d_vjp) -> list[Row]:
    """conv2d's dx, dkernel, dbias; `rule(x, w, dy, stride=, padding=) -> (dx, dw, db)`."""
    kw = dict(stride=case["stride"], padding=case["padding"])
    args = [_data(rng, s) for s in (case["x_shape"], case["w_shape"], case["w_shape"][3:])]
    names = ("dx", "dkernel", "dbias")
    return check_vjp(
        functools.partial(ops.conv2d, **kw),
        lambda x, w, b, dy: rule(x, w, dy, **kw),
        *args,
        **_layer(case, rng, dtype, "conv2d", names),
    )


def check_max_pool(case, rng, dtype, rule=grads.max_pool_vjp, kind="continuous") -> list[Row]:
    """max_pool's dx on `kind` inputs ("continuous" or one of TIE_KINDS);
    `rule(x, dy, window=, stride=, padding=) -> dx`."""
    return _pool_rows("max_pool", ops.max_pool, case, rng, dtype, rule, kind)


def check_avg_pool(case, rng, dtype, rule=grads.avg_pool_vjp) -> list[Row]:
    """avg_pool's dx, dividing by the window size or, with case["count_include_pad"] False, by
    the count of real inputs; `rule(x, dy, window=, stride=, padding=, count_include_pad=)`."""
    include = case.get("count_include_pad", True)
    return _pool_rows("avg_pool", ops.avg_pool, case, rng, dtype, rule, count_include_pad=include)


def _pool_rows(layer, op, case, rng, dtype, rule, kind="continuous", **extra) -> list[Row]:
    kw = dict(window=case["window"], stride=case["stride"], padding=case["padding"], **extra)
    forward, hand = functools.partial(op, **kw), functools.partial(rule, **kw)
    x = _given(rng, case["x_shape"], kind)
    return check_vjp(forward, hand, x, **_layer(case, rng, dtype, layer, kind=kind))


def check_relu(case, rng, dtype, rule=grads.relu_vjp, kind="continuous") -> list[Row]:
    """relu's dx on `kind` inputs: TIE_KINDS put exact zeros, the kink, under test."""
    x = _given(rng, case["x_shape"], kind)
    return check_vjp(ops.relu, rule, x, **_layer(case, rng, dtype, "relu", kind=kind))


def check_dense(case, rng, dtype, rule=grads.dense_vjp) -> list[Row]:
    """dense's dx, dkernel, dbias; `rule(x, w, dy) -> (dx, dw, db)`."""
    (i, o) = case["w_shape"]
    args = [_data(rng, shape) for shape in [(i,), (i, o), (o,)]]
    names = ("dx", "dkernel", "dbias")
    return check_vjp(
        ops.dense,
        lambda x, w, b, dy: rule(x, w, dy),
        *args,
        **_layer(case, rng, dtype, "dense", names),
    )


def check_flatten(case, rng, dtype, rule=grads.flatten_vjp) -> list[Row]:
    x = _data(rng, case["x_shape"])
    return check_vjp(ops.flatten, rule, x, **_layer(case, rng, dtype, "flatten"))


def check_cross_entropy(case, rng, dtype, rule=grads.cross_entropy_vjp) -> list[Row]:
    """dlogits_NK, (N, K) = case["shape"], for case["target"]: "int" labels, "soft" probability
    targets, or "smoothed" int labels with case["label_smoothing"]."""
    (n, k), smoothing = case["shape"], case.get("label_smoothing", 0.0)
    logits, labels = _data(rng, (n, k)), rng.integers(0, k, n)
    if case["target"] == "soft":
        e = np.exp(_data(rng, (n, k)))
        labels = e / e.sum(axis=1, keepdims=True)

    def hand(z, dy):  # dy weighs each example's loss
        return dy[:, None] * rule(z, labels, label_smoothing=smoothing)

    forward = functools.partial(losses.cross_entropy, labels=labels, label_smoothing=smoothing)
    check = f"cross_entropy[{case['target']}]"
    return check_vjp(forward, hand, logits, **_layer(case, rng, dtype, check, ("dlogits",)))


# --------------------------------------------------------------------------- layer kinds


def check_layer(
    layer: layers.Layer,
    in_shape,
    *,
    batch: int = 1,
    train: bool = False,
    dtypes=("float32", "float64"),
    data=None,
    seed=0,
) -> list[Row]:
    """A layer kind's hand-derived rule (cnnjax.layers protocol) vs autodiff and FD, through
    check_vjp's engine, on a batch of `batch` examples of `in_shape`.

    f(params, x_N) is the layer's one-example `apply` vmapped over the batch (axis layers.BATCH),
    so a rule through batch statistics is checked whole. The hands: its `vjp`, vmapped with the
    parameter gradients summed (rows "Kind/dx", "Kind/kernel", ...), and, where the kind has its
    own batched form, its `vjp_batch` (rows "... batched"). Params are its `init`, every leaf
    shifted by N(0, 0.1^2) (init's zeros and ones hide a rule that drops a term); state its
    `init_state`, in the checked dtype; in train mode (`train`) its key is fixed by `seed`.
    `data` as check_vjp (tie-heavy data for a kind with a policy at its kinks)."""
    dtypes = (dtypes,) if isinstance(dtypes, str) else tuple(dtypes)
    rows, in_shape = [], tuple(in_shape)
    for dtype in dtypes:
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        key = jax.random.key(int(rng.integers(2**31)))
        params = layer.init(key, in_shape, jnp.float32)
        params = jax.tree.map(lambda p, r=rng: np.asarray(p) + 0.1 * _data(r, np.shape(p)), params)
        x_N = _given(rng, (batch, *in_shape), data or "continuous")
        state = layer.init_state(in_shape, jnp.float32)

        def ctx(dtype, key=key, state=state):
            cast = jax.tree.map(lambda s: jnp.asarray(s, dtype), state)
            return layers.Context(train, key if train else None, cast)

        def forward(p, x_N):
            one = lambda x: layer.apply(p, x, ctx(x_N.dtype))  # noqa: E731
            return jax.vmap(one, axis_name=layers.BATCH)(x_N)

        def vmapped(p, x_N, dy_N):
            dx_N, dp = layers.Layer.vjp_batch(layer, p, x_N, dy_N, ctx(x_N.dtype))
            return (dp, dx_N), None

        def batched(p, x_N, dy_N):
            dx_N, dp = layer.vjp_batch(p, x_N, dy_N, ctx(x_N.dtype))
            return (dp, dx_N), None

        hands = [_Hand("", vmapped, True)]
        if type(layer).vjp_batch is not layers.Layer.vjp_batch:
            hands.append(_Hand(" batched", batched, True))
        case = {"layer": layer, "x_shape": in_shape, "batch": batch, "train": train}
        where = dict(name=type(layer).__name__, argnames=("", "dx"), case=case, data=data)
        rows += _check(forward, forward, hands, (params, x_N), dtype=dtype, rng=rng, **where)[0]
    return rows


def assert_layer(layer: layers.Layer, in_shape, **kwargs) -> list[Row]:
    """check_layer, raising AssertionError with the failing rows' table (for pytest)."""
    return _assert(check_layer(layer, in_shape, **kwargs))


def check_kind(kind: type[layers.Layer], rng, dtype) -> list[Row]:
    """A registered kind on the cases of one draw of its `gradcheck_cases(rng)`, on continuous
    data and on each tie-heavy data kind its rule has a policy for."""
    rows = []
    for case in kind.gradcheck_cases(rng):
        kw = dict(batch=case.batch, train=case.train, dtypes=dtype, seed=rng)
        for data in (None, *case.tie_kinds):
            rows += check_layer(case.layer, case.in_shape, data=data, **kw)
    return rows


def layer_checks(rngs, dtype: str, num_cases: int = 4, kinds=None) -> list[Row]:
    """Every registered layer kind and the loss on `num_cases` random cases (only the kinds of
    `kinds`, without the loss, if given); `rngs` yields a Generator per kind and case (seeded by
    position, so every dtype sees the same cases and data)."""
    rows, own = [], kinds is not None
    kinds = list(layers.KINDS.values()) if kinds is None else list(kinds)
    for _ in range(num_cases):
        for kind in kinds:
            rows += check_kind(kind, next(rngs), dtype)
        if own:
            continue
        r = next(rngs)
        shape, smoothing = (int(r.integers(1, 5)), int(r.integers(2, 7))), r.uniform(0.05, 0.5)
        for target in ("int", "soft", "smoothed"):
            case = {"shape": shape, "target": target}
            case |= {"label_smoothing": float(smoothing)} if target == "smoothed" else {}
            rows += check_cross_entropy(case, r, dtype)
    return rows


# --------------------------------------------------------------------------- whole networks


def random_spec(rng) -> tuple[models.Spec, tuple[int, int, int]]:
    """A small valid network and its input shape: 8-16 px, 1-3 channels; 1-3 blocks, each a
    conv (kernel 1-4, stride 1-3, any padding), maybe BatchNorm (the conv then without its bias,
    whose gradient would be exactly zero), an activation (ReLU, Tanh or
    GELU) and maybe a max or avg pool (window 2-3, stride 1-3, any padding), a block sometimes
    wrapped in a Residual (a projection where its shape changes); Flatten or GlobalAvgPool,
    maybe Dropout, 1-2 Dense. Redrawn until models.output_shapes accepts it."""
    activations = (layers.ReLU, layers.ReLU, layers.Tanh, layers.GELU)
    while True:
        shape, spec = (*_pair(rng, 8, 16), int(rng.integers(1, 4))), []
        for _ in range(rng.integers(1, 4)):
            features, kernel, stride = int(rng.integers(1, 5)), _pair(rng, 1, 4), _pair(rng, 1, 3)
            norm = rng.integers(3) == 0  # a BatchNorm after the conv, which then has no bias
            block = [models.Conv(features, kernel, stride, random_padding(rng), use_bias=not norm)]
            block += [layers.BatchNorm(momentum=0.9)] if norm else []
            block.append(activations[rng.integers(len(activations))]())
            pool = (_pair(rng, 2, 3), _pair(rng, 1, 3), random_padding(rng))
            if (choice := rng.integers(3)) == 1:
                block.append(models.MaxPool(*pool))
            elif choice == 2:
                block.append(models.AvgPool(*pool, count_include_pad=bool(rng.integers(2))))
            spec += [layers.Residual(block)] if rng.integers(4) == 0 else block
        spec.append(models.Flatten() if rng.integers(3) else layers.GlobalAvgPool())
        spec += [layers.Dropout(0.3)] if rng.integers(4) == 0 else []
        if rng.integers(2):
            spec += [models.Dense(int(rng.integers(2, 9))), models.ReLU()]
        spec.append(models.Dense(int(rng.integers(2, 6))))
        with contextlib.suppress(ValueError):
            models.output_shapes(tuple(spec), shape)
            return tuple(spec), shape


def _network_inputs(spec, input_shape, rng, dtype, batch):
    """Params (init's kernels, biases N(0, 0.1^2)), x_NHWC normal, labels_N; x64 set if float64."""
    params = models.init(jax.random.key(int(rng.integers(2**31))), spec, input_shape, dtype)
    params = _with_random_biases(params, rng, dtype)
    num_classes = models.output_shapes(spec, input_shape)[-1][0]
    x_NHWC = jnp.asarray(_data(rng, (batch, *input_shape)), dtype)
    return params, x_NHWC, rng.integers(0, num_classes, batch)


def _with_random_biases(params: dict, rng, dtype) -> dict:
    """Every "bias" leaf, at any depth, N(0, 0.1^2) (init's zeros hide a rule that drops one),
    drawn in the params' own order."""
    redrawn = {}
    for k, p in params.items():
        if isinstance(p, dict):
            redrawn[k] = _with_random_biases(p, rng, dtype)
        else:
            redrawn[k] = jnp.asarray(0.1 * _data(rng, np.shape(p)), dtype) if k == "bias" else p
    return redrawn


def check_network(
    spec,
    input_shape,
    rng,
    dtype,
    *,
    prefix="net",
    case="",
    batch=3,
    label_smoothing=0.0,
    value_and_grad=backprop.value_and_grad,
    fns=models.HAND_DERIVED,
    train=None,
) -> list[Row]:
    """`value_and_grad(params, x, labels, spec, label_smoothing=, state=, train=, key=)`, and
    jax.grad through `fns` (the custom_vjp twins), vs jax.value_and_grad(models.loss) per leaf,
    named by its path ("net/conv1/kernel hand vs autodiff"); in float64 the first vs FD too.
    The engine of check_vjp, on f = params -> loss. In train mode (`train`; None: when the spec
    has BatchNorm or Dropout) the loss runs on the batch's statistics (the rules through them
    checked whole) and Dropout's masks from a key drawn from `rng`; the state is init_state's."""
    if train is None:
        train = any(isinstance(layer, layers.BatchNorm | layers.Dropout) for layer in _flat(spec))
    with _x64(dtype):
        params, x, labels = _network_inputs(spec, input_shape, rng, dtype, batch)
        state = jax.tree.map(lambda a: a.astype(dtype), models.init_state(spec, input_shape))
    key = jax.random.key(int(rng.integers(2**31))) if train else None
    kw = dict(label_smoothing=label_smoothing)
    kw |= dict(state=state, train=train, key=key) if state or train else {}

    def loss(p, fns=models.PLAIN):
        return models.loss(p, x, labels, spec, **kw, fns=fns)

    def hand(p, dy):  # the VJP of a scalar: dy times the gradient
        value, g = value_and_grad(p, x, labels, spec, **kw)
        return jax.tree.map(lambda leaf: dy * leaf, g), value

    def custom_vjp(p, dy):
        return jax.vjp(functools.partial(loss, fns=fns), p)[1](dy)[0], None

    hands = [_Hand(" hand", hand, True), _Hand(" custom_vjp", custom_vjp, False)]
    where = dict(name=prefix, argnames=("",), case=case)
    rows, want, (got, _) = _check(loss, loss, hands, (params,), dtype=dtype, rng=rng, **where)
    tol = TOL_AUTODIFF[dtype]
    return [_row(f"{prefix}/loss hand vs autodiff", case, dtype, got, want, tol), *rows]


def _flat(spec) -> list:
    """The layers of a spec, a Residual's body's included."""
    return [x for layer in spec for x in (layer, *_flat(getattr(layer, "body", ())))]


def groups(num_random_specs=20, seed=0, dtypes=("float32", "float64"), layer_cases=8, kinds=None):
    """(group, its rows), yielded as each is checked: per dtype, "layers 1/8" .. (every layer
    rule on one case), "REFERENCE_CNN" (batch 2), "random spec 1/20" .. (batch 3, every other
    one with label smoothing 0.1). With `kinds` (layer kinds, e.g. those a user's module
    registers): only their layer checks."""
    for dtype in dtypes:
        rngs = (np.random.default_rng([seed, i]) for i in itertools.count())
        for c in range(layer_cases):  # a case at a time draws what layer_checks(n) draws
            yield f"layers {c + 1}/{layer_cases}", layer_checks(rngs, dtype, 1, kinds)
        if kinds is not None:
            continue
        ref = (models.REFERENCE_CNN, models.REFERENCE_INPUT_SHAPE, next(rngs), dtype)
        net = check_network(*ref, prefix="reference_cnn", case="REFERENCE_CNN", batch=2)
        yield "REFERENCE_CNN", net
        for i in range(num_random_specs):
            spec, shape = random_spec(r := next(rngs))
            net = check_network(
                spec, shape, r, dtype, case=f"random spec {i}", label_smoothing=0.1 * (i % 2)
            )
            yield f"random spec {i + 1}/{num_random_specs}", net


def run_all(num_random_specs=20, seed=0, dtypes=("float32", "float64"), layer_cases=8) -> list[Row]:
    """Every row of `groups`: layer checks, REFERENCE_CNN and random networks, in each dtype."""
    return [row for _, rows in groups(num_random_specs, seed, dtypes, layer_cases) for row in rows]


# --------------------------------------------------------------------------- report


def aggregate(rows: list[Row]) -> list[Row]:
    """One row per (check, dtype): the worst errors over its cases; passed if all passed."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.check, row.dtype), []).append(row)
    return [
        Row(
            check,
            f"{len(g)} cases",
            dtype,
            max(r.max_abs_err for r in g),
            max(r.max_rel_err for r in g),
            max(r.tolerance for r in g),
            all(r.passed for r in g),
        )
        for (check, dtype), g in groups.items()
    ]


def format_table(rows: list[Row]) -> str:
    """Columns: check, case, dtype, max abs err, max rel err, tolerance, pass/FAIL."""
    header = ("check", "case", "dtype", "max abs err", "max rel err", "tolerance", "result")
    body = [
        (
            r.check,
            r.case,
            r.dtype,
            f"{r.max_abs_err:.2e}",
            f"{r.max_rel_err:.2e}",
            f"{r.tolerance:.0e}",
            "pass" if r.passed else "FAIL",
        )
        for r in rows
    ]
    return tables.format_table(header, body, right=(3, 4, 5))


def progress_line(group: str, rows: list[Row]) -> str:
    """One line for a group of checks as `groups` yields it: its dtype, number of checks, the
    worst relative error (its check and tolerance), and pass, or FAIL and the failed checks."""
    worst, failed = max(rows, key=lambda r: r.max_rel_err), [r for r in rows if not r.passed]
    result = f"FAIL: {', '.join(dict.fromkeys(r.check for r in failed))}" if failed else "pass"
    return (
        f"{worst.dtype}  {group}: {len(rows)} checks, worst {worst.max_rel_err:.1e} "
        f"(tol {worst.tolerance:.0e}, {worst.check}), {result}"
    )


def summary(rows: list[Row]) -> str:
    """N checks, N failed, and per dtype and reference the worst relative error."""
    parts = [f"{len(rows)} checks, {sum(not r.passed for r in rows)} failed"]
    for dtype, ref in itertools.product(sorted({r.dtype for r in rows}), ("autodiff", "fd")):
        group = [r for r in rows if r.dtype == dtype and f"vs {ref}" in r.check]
        if group:
            worst = max(group, key=lambda r: r.max_rel_err)
            parts.append(
                f"{dtype} vs {ref}: worst {worst.max_rel_err:.1e} "
                f"(tol {worst.tolerance:.0e}, {worst.check})"
            )
    return "; ".join(parts)
