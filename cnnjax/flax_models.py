"""The networks of `cnnjax.models` as flax.linen and flax.nnx modules, and param converters.

Legend: x_NHWC a batch of examples (Flax modules take batches), logits_NK, labels_N integer class
ids. Params are the pure tree of `cnnjax.models`: {"conv1": {"kernel": w_HWIO, "bias": b_O}, ...,
"dense2": {"kernel": w_IO, "bias": b_O}}.

The Flax submodules are named by `models.layer_names(spec)` (conv1, ..., dense1, ...) and Flax's
Conv / Dense / Linear store `kernel` and `bias` in the same HWIO / IO layouts, so the linen params
tree *is* the pure tree and the nnx Param state *is* it too: every converter here only wraps or
unwraps containers, and never reshapes or transposes an array.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.core import unfreeze

from cnnjax import losses, models, ops
from cnnjax.layers import chain
from cnnjax.output import tables

# float32 eps is 1.2e-7. The two paths run the same lax ops but may sum in a different order
# (vmapped single examples vs one batched op); the rounding of a sum of n terms in another order
# differs by ~sqrt(n) eps of its scale. The largest sums in the reference net are dense1 (1600
# inputs), conv2 (3*3*32 = 288) and, for gradients, the batch mean; sqrt(1600 * 256) eps ~ 8e-5
# is a loose bound, 1e-4 of the largest |value| leaves headroom and still catches any layout or
# padding mistake (those give differences of order 1e-1 of the scale).
FLOAT32_RTOL = 1e-4


def _check_batch(x_NHWC):
    if getattr(x_NHWC, "ndim", None) != 4:
        shape = getattr(x_NHWC, "shape", type(x_NHWC).__name__)
        raise ValueError(f"Flax modules take a batch x_NHWC (rank 4), got shape {shape}")


# --------------------------------------------------------------------------- flax.linen


class LinenCNN(nn.Module):
    """`spec` as a linen module: `LinenCNN(spec).apply(pure_to_linen(params, state), x_NHWC)`
    gives logits_NK equal to `models.batch_logits(params, x_NHWC, spec, state=state)`; with
    train=True (and mutable=["batch_stats"], rngs={"dropout": key}) it trains as
    `models.batch_apply(..., train=True)`. Each layer is its kind's linen counterpart
    (cnnjax.layers: `layer.linen(name)`, or Flax's functions for layers without params)."""

    spec: models.Spec = models.REFERENCE_CNN

    @nn.compact
    def __call__(self, x_NHWC, train: bool = False):
        _check_batch(x_NHWC)
        return chain.linen_apply(self.spec, x_NHWC, train)


def pure_to_linen(params: dict, state: dict | None = None) -> dict:
    """Linen variables: the pure params tree is already linen's "params", the pure state its
    "batch_stats" (left out when empty)."""
    variables = {"params": _copy(params)}
    if state:
        variables["batch_stats"] = _copy(state)
    return variables


def linen_to_pure(variables) -> dict:
    """The pure params tree from linen variables {"params": ...} (from init, or a gradient)."""
    return _copy(unfreeze(variables)["params"])


def linen_state(variables) -> dict:
    """The pure state tree from linen variables (their "batch_stats"; {} if none)."""
    return _copy(unfreeze(variables).get("batch_stats", {}))


def _copy(tree) -> dict:
    """The same arrays in fresh plain dicts."""
    return {k: _copy(v) if isinstance(v, Mapping) else v for k, v in tree.items()}


# --------------------------------------------------------------------------- flax.nnx


class NnxCNN(nnx.Module):
    """`spec` as an nnx module on examples of `input_shape` (H, W, C): one attribute per layer
    with a module, named as its params (conv1, ..., batchnorm1, ..., dense1), so
    `nnx.state(m, nnx.Param)` is the pure params tree and `nnx.state(m, nnx.BatchStat)` the pure
    state. Trains as `models.batch_apply(..., train=True)` after `m.train()`, evaluates after
    `m.eval()` (nnx's modes)."""

    def __init__(self, spec: models.Spec, input_shape, *, rngs: nnx.Rngs):
        self.spec = tuple(spec)
        for key, module in chain.nnx_modules(self.spec, input_shape, rngs).items():
            if hasattr(self, key):
                raise ValueError(f"layer name {key!r} clashes with an NnxCNN attribute")
            setattr(self, key, module)

    def __call__(self, x_NHWC):
        """logits_NK for a batch x_NHWC."""
        _check_batch(x_NHWC)
        return chain.nnx_apply(self.spec, self, x_NHWC)


def pure_to_nnx(params: dict, spec: models.Spec, input_shape, state: dict | None = None) -> NnxCNN:
    """A new NnxCNN holding `params` and `state` (the arrays themselves, not copies). It is
    built for real (a Dropout module keeps a random stream, which an abstract build would leave
    without values), its initial params replaced at once."""
    module = NnxCNN(spec, input_shape, rngs=nnx.Rngs(0))
    for what, given, expected in (
        ("params", params, nnx_to_pure(module)),
        ("state", state or {}, nnx_state(module)),
    ):
        given, expected = jax.tree.map(jnp.shape, given), jax.tree.map(jnp.shape, expected)
        if given != expected:
            raise ValueError(
                f"{what} do not fit the spec on input {tuple(input_shape)}: shapes {given}, "
                f"expected {expected}; build them with cnnjax.models.init / init_state"
            )
    nnx.update(module, params)
    if state:
        nnx.update(module, state)
    return module


def nnx_to_pure(module_or_state) -> dict:
    """The pure params tree of an NnxCNN, or of an nnx.State of its Params (e.g. from nnx.grad)."""
    state = module_or_state
    if isinstance(state, nnx.Module):
        state = nnx.state(state, nnx.Param)
    return nnx.to_pure_dict(state)


def nnx_state(module: nnx.Module) -> dict:
    """The pure state tree (BatchNorm's running statistics) of an NnxCNN."""
    return nnx.to_pure_dict(nnx.state(module, nnx.BatchStat))


# --------------------------------------------------------------------------- parity: pure vs Flax


class ParityRow(NamedTuple):
    framework: str  # "linen" or "nnx"
    quantity: str  # "logits", "loss", "grad conv1/kernel" or "state batchnorm1/mean", ...
    max_abs_diff: float  # max |flax - pure|
    tolerance: float  # FLOAT32_RTOL * max |pure|
    passed: bool


def _mean_ce(logits_NK, labels_N):
    return jnp.mean(losses.cross_entropy(logits_NK, labels_N))


@functools.partial(jax.jit, static_argnames=("spec", "train"))
def _pure_values(params, state, x_NHWC, labels_N, spec, train):
    def loss_fn(p):
        logits_NK, new_state = models.batch_apply(p, x_NHWC, spec, state=state, train=train)
        return _mean_ce(logits_NK, labels_N), (logits_NK, new_state)

    (loss, (logits_NK, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return logits_NK, loss, grads, new_state


@functools.partial(jax.jit, static_argnames=("spec", "train"))
def _linen_values(variables, x_NHWC, labels_N, spec, train):
    others = {k: v for k, v in variables.items() if k != "params"}

    def loss_fn(params):
        logits_NK, updated = LinenCNN(spec).apply(
            {"params": params, **others}, x_NHWC, train, mutable=["batch_stats"]
        )
        return _mean_ce(logits_NK, labels_N), (logits_NK, updated)

    (loss, (logits_NK, updated)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        variables["params"]
    )
    return logits_NK, loss, grads, updated


@nnx.jit
def _nnx_values(module, x_NHWC, labels_N):
    def loss_fn(m):
        logits_NK = m(x_NHWC)
        return _mean_ce(logits_NK, labels_N), logits_NK

    (loss, logits_NK), grads = nnx.value_and_grad(loss_fn, has_aux=True)(module)
    return logits_NK, loss, grads


def flax_values(params: dict, spec: models.Spec, x_NHWC, labels_N, *, state=None, train=False):
    """{"pure" | "linen" | "nnx": (logits_NK, loss, grads, state after)}: the batch-mean
    cross-entropy, its gradient w.r.t. the params (a pure tree) and the network's state after the
    batch (BatchNorm's running statistics; updated in train mode), each framework from the same
    params and state. A spec with Dropout compares in eval mode only: Flax derives each
    dropout layer's key from its own rng plumbing (the masks of one key are tested equal layer
    by layer in tests/layers/test_dropout.py).

    Each framework runs as its own jitted program (so XLA cannot merge one into another), at
    the highest matmul precision (ops.highest_precision: float32 is float32 on GPUs and TPUs
    too); the converters run outside jit, as a user would call them.
    """
    state = {} if state is None else state
    module = pure_to_nnx(params, spec, x_NHWC.shape[1:], state)
    module.train() if train else module.eval()
    with ops.highest_precision():
        values = {"pure": _pure_values(params, state, x_NHWC, labels_N, spec, bool(train))}
        variables = pure_to_linen(params, state)
        logits_NK, loss, grads, updated = _linen_values(
            variables, x_NHWC, labels_N, spec, bool(train)
        )
        values["linen"] = (logits_NK, loss, _copy(unfreeze(grads)), linen_state(updated))
        logits_NK, loss, grads = _nnx_values(module, x_NHWC, labels_N)
        values["nnx"] = (logits_NK, loss, nnx_to_pure(grads), nnx_state(module))
    return values


def _row(framework, quantity, got, want, rtol) -> ParityRow:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:  # never broadcast one onto the other
        return ParityRow(framework, quantity, float("inf"), 0.0, False)
    diff = float(np.max(np.abs(got - want))) if want.size else 0.0
    tol = rtol * float(np.max(np.abs(want), initial=0.0))
    return ParityRow(framework, quantity, diff, tol, diff <= tol)


def _leaves(tree) -> dict[str, object]:
    """{"conv1/kernel": leaf, "residual1/conv1/bias": leaf, ...}"""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): leaf for path, leaf in flat}


def parity_report(
    params, spec, x_NHWC, labels_N, *, rtol=FLOAT32_RTOL, state=None, train=False
) -> list[ParityRow]:
    """Pure vs linen vs nnx on one batch: a row per framework for the logits, the loss, each
    gradient leaf and each state leaf, each passing when max |flax - pure| <= rtol * max |pure|.
    A leaf one framework lacks fails (an infinite difference)."""
    values = flax_values(params, spec, x_NHWC, labels_N, state=state, train=train)
    logits, loss, grads, new_state = values["pure"]
    rows = []
    for framework in ("nnx", "linen"):
        f_logits, f_loss, f_grads, f_state = values[framework]
        rows.append(_row(framework, "logits", f_logits, logits, rtol))
        rows.append(_row(framework, "loss", f_loss, loss, rtol))
        for what, pure, flax in (("grad", grads, f_grads), ("state", new_state, f_state)):
            got = _leaves(flax)
            for path, want in _leaves(pure).items():
                quantity = f"{what} {path}"
                rows.append(
                    _row(framework, quantity, got.get(path, np.full((0,), np.nan)), want, rtol)
                )
    return rows


def _verdict(row: ParityRow) -> str:
    return "PASS" if row.passed else "FAIL"


def format_parity(rows: list[ParityRow]) -> str:
    """The parity rows as a table (max |flax - pure|, tolerance, PASS/FAIL), then a line of how
    many passed."""
    header = ("framework", "quantity", "max |diff|", "tolerance", "result")
    body = [
        (r.framework, r.quantity, f"{r.max_abs_diff:.3e}", f"{r.tolerance:.3e}", _verdict(r))
        for r in rows
    ]
    passed = sum(row.passed for row in rows)
    return f"{tables.format_table(header, body, right=(2, 3))}\n{passed}/{len(rows)} passed"
