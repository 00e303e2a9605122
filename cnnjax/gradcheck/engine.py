"""The engine of the gradient checks: a hand-derived VJP vs jax autodiff (float32, float64) vs
central finite differences (float64), for any function (`check_vjp`, `check_custom_vjp`), each
comparison a report Row. cnnjax.gradcheck.suite checks the layer kinds and networks on it.

Three references, each for what it can prove: autodiff (jax.vjp of the plain function); FD,
directional, at the largest step of FD_STEPS free of a kink (chosen from f alone, never from the
rule under test); tie-heavy data (small integers, ReLU plateaus), autodiff only and bit-exact in
float64, where the rule is a policy. Error: max|a - b| / max(max|b|, tiny), b the reference.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import ops
from cnnjax.gradcheck.report import Row, case_text, raise_failures

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


def _run(compute, *args):
    """compute(*args), jitted at the checks' precision: every dot and convolution HIGHEST
    (ops.highest_precision), so float32 is float32 on GPUs (not TF32) and TPUs (not bf16)."""
    with ops.highest_precision():
        return jax.jit(compute, compiler_options=_COMPILE)(*args)


def x64(dtype: str):
    """float64 needs x64 enabled, only while a check runs (importing changes no config)."""
    return jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()


def compare(check: str, case, dtype: str, got, want, tol: float) -> Row:
    """A rule's result vs the reference's; a wrong shape or dtype, or nothing to compare, fails."""
    same_dtype = getattr(got, "dtype", None) == getattr(want, "dtype", None)
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    abs_err = rel_err = np.inf
    if got.shape == want.shape and want.size and same_dtype:
        abs_err = float(np.max(np.abs(got - want)))
        rel_err = abs_err / max(float(np.max(np.abs(want))), float(np.finfo(dtype).tiny))
    return Row(check, case_text(case), dtype, abs_err, rel_err, tol, bool(rel_err <= tol))


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
        return compare(check, case, "float64", grad, v_D[0], TOL_FD)  # a wrong shape fails
    agree_SD = np.abs(fd[:, 0] - fd[:, 1]) <= TOL_FD / 2 * np.max(np.abs(fd[0, 0]))
    fd_D = fd[np.argmax(agree_SD, axis=0), 0, np.arange(len(v_D))]
    kept = agree_SD.any(axis=0)
    analytic = np.tensordot(v_D, grad, grad.ndim)
    return compare(check, case, "float64", analytic[kept], fd_D[kept], TOL_FD)


def draw(rng, shape, kind="continuous") -> np.ndarray:
    """Normal, small integers -1..1, or relu(normal) ("plateaus")."""
    if kind == "integers":
        return rng.integers(-1, 2, shape).astype(np.float64)
    values = rng.standard_normal(shape)
    return np.maximum(values, 0.0) if kind == "plateaus" else values


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
    hand = Hand("", lambda *a: (vjp(*a), None), fd)
    kw = dict(name=name, argnames=argnames, case=case, dtypes=dtypes, data=data, seed=seed)
    return _check_dtypes(f, f, hand, args, **kw)


def assert_vjp(f, vjp, *args, **kwargs) -> list[Row]:
    """`check_vjp` for a test: an AssertionError whose message is the table of the failing
    rows and the summary; else the rows."""
    return raise_failures(check_vjp(f, vjp, *args, **kwargs))


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
    return _check_dtypes(primal, f, Hand("", rule, fd), args, **kw)


def assert_custom_vjp(f, *args, **kwargs) -> list[Row]:
    """`check_custom_vjp` for a test, raising as `assert_vjp`."""
    return raise_failures(check_custom_vjp(f, *args, **kwargs))


class Hand(NamedTuple):
    label: str  # after the leaf in its rows' names: "", " hand", " custom_vjp"
    vjp: Callable  # (*args, dy) -> (cotangents, aux: returned by check_hands, None if unused)
    fd: bool  # vs FD too (float64, continuous data)


def _check_dtypes(reference, forward, hand, args, *, dtypes, seed, **kw) -> list[Row]:
    """check_hands in each dtype, each from a Generator of `seed` (a Generator: that one)."""
    dtypes = (dtypes,) if isinstance(dtypes, str) else tuple(dtypes)
    if bad := [d for d in dtypes if d not in TOL_AUTODIFF]:
        raise ValueError(f"dtypes {bad}: only {tuple(TOL_AUTODIFF)} are checked")
    rows = []
    for dtype in dtypes:
        rng = np.random.default_rng(seed)
        rows += check_hands(reference, forward, [hand], args, dtype=dtype, rng=rng, **kw)[0]
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


def check_hands(
    reference, forward, hands, args, *, name, dtype, rng, argnames=None, case="", data=None
):
    """Each hand's cotangents vs jax.vjp(reference) at one random dy, and (hand.fd) vs FD of
    `forward`. Returns (rows, the reference's output, each hand's aux). Draws, in order: the
    leaves (if `data`), dy, the FD directions per leaf."""
    if data not in (None, *TIE_KINDS):
        raise ValueError(f"{name}: data={data!r}; pass None or one of {TIE_KINDS}")
    where = _Where(name, *_leaf_names(args, name, argnames), case, dtype, data)
    with x64(dtype):
        leaves, tree = jax.tree.flatten(args)
        leaves = [draw(rng, np.shape(a), data) if data else a for a in leaves]
        leaves = [jnp.asarray(a, dtype) for a in leaves]
        dy = jax.tree.map(
            lambda y: jnp.asarray(draw(rng, y.shape, data and "integers"), y.dtype),
            jax.eval_shape(reference, *tree.unflatten(leaves)),
        )
        fd_on = dtype == "float64" and not data and any(hand.fd for hand in hands)
        v = [jnp.asarray(draw(rng, (FD_DIRECTIONS, *a.shape)), dtype) for a in leaves if fd_on]

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
            case = f"{case_text(where.case)} got {got_tree}, want {want_tree}".strip()
            check = f"{arg}{hand.label} cotangent structure"
            rows.append(Row(check, case, where.dtype, np.inf, np.inf, tol, False))
    for k, leaf in enumerate(where.leaves):
        for hand, g in zip(hands, got, strict=True):
            if g[k] is not None:
                check = f"{leaf}{hand.label} vs {ref}"
                rows.append(compare(check, where.case, where.dtype, g[k], want[k], tol))
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
