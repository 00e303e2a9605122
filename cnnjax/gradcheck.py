"""Gradient checks: the hand-derived rules (cnnjax.grads, cnnjax.backprop) vs jax autodiff vs
finite differences. Past 350 lines because the layer checks and the whole-network checks share
one engine (the data, the FD steps, the comparison against a tolerance) and its constants.

Every check returns report `Row`s. Three references, each for what it can prove:

* autodiff (jax.vjp of the plain op in cnnjax.ops / cnnjax.losses), float32 and float64.
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
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import backprop, grads, losses, models, ops
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
# FD, float64, h = 1e-6: truncation O(h^2 |f'''|) ~ 1e-12 (only cross-entropy curves), rounding
# O(eps64 |f| / h) ~ 2e-10 |f| absolute, so ~1e-7 relative for a leaf whose gradient is 1e-3 of
# the loss. Measured max 3e-8 in the default run (6e-7 over 100 specs); 1e-5 keeps >= 15x. The
# smaller steps serve only directions that meet a kink (~2% in REFERENCE_CNN's wide layers).
FD_STEPS, TOL_FD, FD_DIRECTIONS = (1e-6, 1e-7, 1e-8), 1e-5, 3
TIE_KINDS = ("integers", "plateaus")  # rng.integers(-1, 2); relu(normal): half exact zeros
# Every check compiles a fresh shape, so compiling dominates: LLVM optimization buys nothing on
# arrays this small (skipping it halves the run). XLA's algebraic simplifier aborts the process
# on some conv gradients (jax 0.10.2: jax.grad of a conv with x 4x2, kernel 2x4, stride (2, 1),
# padding 1 all round), and random shapes meet them, so it is skipped too.
_COMPILE = {"xla_backend_optimization_level": 0, "xla_disable_hlo_passes": "algsimp"}


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


def _row(check: str, case, dtype: str, got, want, tol: float) -> Row:
    """A rule's result vs the reference's; a wrong shape or dtype, or nothing to compare, fails."""
    same_dtype = getattr(got, "dtype", None) == getattr(want, "dtype", None)
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    abs_err = rel_err = np.inf
    if got.shape == want.shape and want.size and same_dtype:
        abs_err = float(np.max(np.abs(got - want)))
        rel_err = abs_err / max(float(np.max(np.abs(want))), float(np.finfo(dtype).tiny))
    if isinstance(case, dict):
        case = " ".join(f"{k}={v}".replace(" ", "") for k, v in case.items())
    return Row(check, case, dtype, abs_err, rel_err, tol, bool(rel_err <= tol))


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


def _vjp_rows(layer, case, dtype, fn, args, names, hand, rng, kind="continuous"):
    """hand(*args, dy) (a gradient per arg, named) vs jax.vjp(fn, *args) at a random dy, and
    vs FD in float64 on continuous inputs. args: NumPy arrays, cast to dtype here."""
    ties = kind != "continuous"
    with _x64(dtype):
        args = tuple(jnp.asarray(a, dtype) for a in args)
        y_shape = jax.eval_shape(fn, *args).shape
        dy = jnp.asarray(_data(rng, y_shape, "integers" if ties else kind), dtype)
        fd_dirs = dtype == "float64" and not ties
        v = [jnp.asarray(_data(rng, (FD_DIRECTIONS, *a.shape)), dtype) for a in args if fd_dirs]

        def compute(args, dy, v):
            got = hand(*args, dy)
            fd = [
                _fd(lambda a, i=i: jnp.vdot(dy, fn(*args[:i], a, *args[i + 1 :])), args[i], v_D)
                for i, v_D in enumerate(v)
            ]
            return jax.vjp(fn, *args)[1](dy), got if isinstance(got, tuple) else (got,), fd

        want, got, fd = _run(compute, args, dy, v)
    ref, tol = (f"autodiff, {kind}", TOL_TIES) if ties else ("autodiff", TOL_AUTODIFF)
    rows = [
        _row(f"{layer}/{n} vs {ref}", case, dtype, g, w, tol[dtype])
        for n, g, w in zip(names, got, want, strict=True)
    ]
    for n, g, v_D, fd_2D in zip(names, got, v, fd, strict=False):
        rows.append(_fd_row(f"{layer}/{n} vs fd", case, v_D, g, fd_2D))
    return rows


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


# --------------------------------------------------------------------------- layer checks


def check_conv2d(case, rng, dtype, rule=grads.conv2d_vjp) -> list[Row]:
    """conv2d's dx, dkernel, dbias; `rule(x, w, dy, stride=, padding=) -> (dx, dw, db)`."""
    kw = dict(stride=case["stride"], padding=case["padding"])
    args = [_data(rng, s) for s in (case["x_shape"], case["w_shape"], case["w_shape"][3:])]
    forward, names = functools.partial(ops.conv2d, **kw), ("dx", "dkernel", "dbias")
    return _vjp_rows(
        "conv2d", case, dtype, forward, args, names, lambda x, w, b, dy: rule(x, w, dy, **kw), rng
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
    x = _data(rng, case["x_shape"], kind)
    return _vjp_rows(layer, case, dtype, forward, [x], ("dx",), hand, rng, kind)


def check_relu(case, rng, dtype, rule=grads.relu_vjp, kind="continuous") -> list[Row]:
    """relu's dx on `kind` inputs: TIE_KINDS put exact zeros, the kink, under test."""
    x = _data(rng, case["x_shape"], kind)
    return _vjp_rows("relu", case, dtype, ops.relu, [x], ("dx",), rule, rng, kind)


def check_dense(case, rng, dtype, rule=grads.dense_vjp) -> list[Row]:
    """dense's dx, dkernel, dbias; `rule(x, w, dy) -> (dx, dw, db)`."""
    (i, o) = case["w_shape"]
    args = [_data(rng, shape) for shape in [(i,), (i, o), (o,)]]
    names = ("dx", "dkernel", "dbias")
    return _vjp_rows(
        "dense", case, dtype, ops.dense, args, names, lambda x, w, b, dy: rule(x, w, dy), rng
    )


def check_flatten(case, rng, dtype, rule=grads.flatten_vjp) -> list[Row]:
    x = _data(rng, case["x_shape"])
    return _vjp_rows("flatten", case, dtype, ops.flatten, [x], ("dx",), rule, rng)


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
    return _vjp_rows(check, case, dtype, forward, [logits], ("dlogits",), hand, rng)


def layer_checks(rngs, dtype: str, num_cases: int = 4) -> list[Row]:
    """Every layer rule on `num_cases` random cases; `rngs` yields a Generator per case group
    (seeded by position, so every dtype sees the same cases and data)."""
    rows, kinds = [], ("continuous", *TIE_KINDS)
    for _ in range(num_cases):
        rows += check_conv2d(random_case(r := next(rngs), "conv2d"), r, dtype)
        case = random_case(r := next(rngs), "pool")
        rows += [row for kind in kinds for row in check_max_pool(case, r, dtype, kind=kind)]
        for include in (True, False):
            rows += check_avg_pool({**case, "count_include_pad": include}, r, dtype)
        x_case = {"x_shape": case["x_shape"]}
        rows += [row for kind in kinds for row in check_relu(x_case, r, dtype, kind=kind)]
        rows += check_flatten(x_case, r, dtype)
        rows += check_dense({"w_shape": _pair(r, 1, 8)}, r, dtype)
        shape, smoothing = (int(r.integers(1, 5)), int(r.integers(2, 7))), r.uniform(0.05, 0.5)
        for target in ("int", "soft", "smoothed"):
            case = {"shape": shape, "target": target}
            case |= {"label_smoothing": float(smoothing)} if target == "smoothed" else {}
            rows += check_cross_entropy(case, r, dtype)
    return rows


# --------------------------------------------------------------------------- whole networks


def random_spec(rng) -> tuple[models.Spec, tuple[int, int, int]]:
    """A small valid network and its input shape: 8-16 px, 1-3 channels; 1-3 convs (kernel 1-4,
    stride 1-3, any padding) each with ReLU and maybe a max or avg pool (window 2-3, stride 1-3,
    any padding); Flatten; 1-2 Dense. Redrawn until models.output_shapes accepts it."""
    while True:
        shape, spec = (*_pair(rng, 8, 16), int(rng.integers(1, 4))), []
        for _ in range(rng.integers(1, 4)):
            features, kernel, stride = int(rng.integers(1, 5)), _pair(rng, 1, 4), _pair(rng, 1, 3)
            spec += [models.Conv(features, kernel, stride, random_padding(rng)), models.ReLU()]
            pool = (_pair(rng, 2, 3), _pair(rng, 1, 3), random_padding(rng))
            if (choice := rng.integers(3)) == 1:
                spec.append(models.MaxPool(*pool))
            elif choice == 2:
                spec.append(models.AvgPool(*pool, count_include_pad=bool(rng.integers(2))))
        spec.append(models.Flatten())
        if rng.integers(2):
            spec += [models.Dense(int(rng.integers(2, 9))), models.ReLU()]
        spec.append(models.Dense(int(rng.integers(2, 6))))
        with contextlib.suppress(ValueError):
            models.output_shapes(tuple(spec), shape)
            return tuple(spec), shape


def _network_inputs(spec, input_shape, rng, dtype, batch):
    """Params (init's kernels, biases N(0, 0.1^2)), x_NHWC normal, labels_N; x64 set if float64."""
    params = models.init(jax.random.key(int(rng.integers(2**31))), spec, input_shape, dtype)
    for p in params.values():
        p["bias"] = jnp.asarray(0.1 * _data(rng, p["bias"].shape), dtype)
    num_classes = models.output_shapes(spec, input_shape)[-1][0]
    x_NHWC = jnp.asarray(_data(rng, (batch, *input_shape)), dtype)
    return params, x_NHWC, rng.integers(0, num_classes, batch)


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
) -> list[Row]:
    """`value_and_grad(params, x, labels, spec, label_smoothing=)`, and jax.grad through `fns`
    (the custom_vjp twins), vs jax.value_and_grad(models.loss) per leaf ("net/conv1/kernel");
    in float64 the first vs FD too."""
    kw = dict(label_smoothing=label_smoothing)
    with _x64(dtype):
        params, x, labels = _network_inputs(spec, input_shape, rng, dtype, batch)
        shapes = {(name, k): a.shape for name, p in params.items() for k, a in p.items()}
        v = {
            leaf: jnp.asarray(_data(rng, (FD_DIRECTIONS, *shape)), dtype)
            for leaf, shape in shapes.items()
            if dtype == "float64"
        }

        def loss(p, fns=models.PLAIN):
            return models.loss(p, x, labels, spec, **kw, fns=fns)

        def loss_at(params, leaf, value):  # the loss with one leaf replaced
            name, k = leaf
            return loss({**params, name: {**params[name], k: value}})

        def compute(params, v):
            fd = {
                leaf: _fd(functools.partial(loss_at, params, leaf), params[leaf[0]][leaf[1]], v_D)
                for leaf, v_D in v.items()
            }
            hand = value_and_grad(params, x, labels, spec, **kw)
            return jax.value_and_grad(loss)(params), hand, jax.grad(loss)(params, fns), fd

        out = _run(compute, params, v)
    return _network_rows(prefix, case, dtype, list(shapes), v, *out)


def _network_rows(prefix, case, dtype, leaves, v, want, got, via_fns, fd) -> list[Row]:
    (want_loss, want), (got_loss, got), tol = want, got, TOL_AUTODIFF[dtype]
    rows = [_row(f"{prefix}/loss hand vs autodiff", case, dtype, got_loss, want_loss, tol)]
    for name, k in leaves:
        check, w = f"{prefix}/{name}/{k}", want[name][k]
        rows.append(_row(f"{check} hand vs autodiff", case, dtype, got[name][k], w, tol))
        rows.append(_row(f"{check} custom_vjp vs autodiff", case, dtype, via_fns[name][k], w, tol))
    for name, k in v:
        check = f"{prefix}/{name}/{k} hand vs fd"
        rows.append(_fd_row(check, case, v[name, k], got[name][k], fd[name, k]))
    return rows


def groups(num_random_specs=20, seed=0, dtypes=("float32", "float64"), layer_cases=8):
    """(group, its rows), yielded as each is checked: per dtype, "layers 1/8" .. (every layer
    rule on one case), "REFERENCE_CNN" (batch 2), "random spec 1/20" .. (batch 3, every other
    one with label smoothing 0.1)."""
    for dtype in dtypes:
        rngs = (np.random.default_rng([seed, i]) for i in itertools.count())
        for c in range(layer_cases):  # a case at a time draws what layer_checks(n) draws
            yield f"layers {c + 1}/{layer_cases}", layer_checks(rngs, dtype, 1)
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
