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
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.core import unfreeze

from cnnjax import losses, models, ops
from cnnjax.output import tables

# float32 eps is 1.2e-7. The two paths run the same lax ops but may sum in a different order
# (vmapped single examples vs one batched op); the rounding of a sum of n terms in another order
# differs by ~sqrt(n) eps of its scale. The largest sums in the reference net are dense1 (1600
# inputs), conv2 (3*3*32 = 288) and, for gradients, the batch mean; sqrt(1600 * 256) eps ~ 8e-5
# is a loose bound, 1e-4 of the largest |value| leaves headroom and still catches any layout or
# padding mistake (those give differences of order 1e-1 of the scale).
FLOAT32_RTOL = 1e-4


def _stateless(layer, x_NHWC):
    """A layer without params on a batch, with Flax's functions. Flax pools default to stride 1,
    not to the window as the spec does, so the stride is always passed explicitly."""
    match layer:
        case models.MaxPool() | models.AvgPool():
            window = ops.as_pair(layer.window, "window")
            stride = window if layer.stride is None else ops.as_pair(layer.stride, "stride")
            if isinstance(layer, models.MaxPool):
                return nn.max_pool(x_NHWC, window, stride, layer.padding)
            # Flax divides by the integer np.prod(window), which strict dtype promotion rejects
            # (float32 / int32), and with count_include_pad=False by counts made with jnp.ones,
            # float64 under x64; so standard promotion, then back to x's dtype as ops.avg_pool.
            with jax.numpy_dtype_promotion("standard"):
                y_NHWC = nn.avg_pool(
                    x_NHWC, window, stride, layer.padding, count_include_pad=layer.count_include_pad
                )
            return y_NHWC.astype(x_NHWC.dtype)
        case models.ReLU():
            return nn.relu(x_NHWC)
        case models.Flatten():
            return x_NHWC.reshape((x_NHWC.shape[0], -1))  # row-major H, W, C, as ops.flatten
    raise TypeError(f"unknown layer {layer!r}")


def _check_batch(x_NHWC):
    if getattr(x_NHWC, "ndim", None) != 4:
        shape = getattr(x_NHWC, "shape", type(x_NHWC).__name__)
        raise ValueError(f"Flax modules take a batch x_NHWC (rank 4), got shape {shape}")


# --------------------------------------------------------------------------- flax.linen


class LinenCNN(nn.Module):
    """`spec` as a linen module: `LinenCNN(spec).apply(pure_to_linen(params), x_NHWC)` gives
    logits_NK equal to `models.batch_logits(params, x_NHWC, spec)`."""

    spec: models.Spec = models.REFERENCE_CNN

    @nn.compact
    def __call__(self, x_NHWC):
        _check_batch(x_NHWC)
        h = x_NHWC
        for layer, name in zip(self.spec, models.layer_names(self.spec), strict=True):
            if isinstance(layer, models.Conv):
                # an int kernel_size means a 1-D kernel to linen, so it is always a pair here
                kernel_hw = ops.as_pair(layer.kernel_size, "kernel_size")
                stride_hw = ops.as_pair(layer.stride, "stride")
                conv = nn.Conv(layer.features, kernel_hw, stride_hw, layer.padding, name=name)
                h = conv(h)
            elif isinstance(layer, models.Dense):
                h = nn.Dense(layer.features, name=name)(h)
            else:
                h = _stateless(layer, h)
        return h


def pure_to_linen(params: dict) -> dict:
    """Linen variables {"params": params}: the pure tree is already linen's params tree."""
    return {"params": {name: dict(layer) for name, layer in params.items()}}


def linen_to_pure(variables) -> dict:
    """The pure params tree from linen variables {"params": ...} (from init, or a gradient)."""
    return {name: dict(layer) for name, layer in unfreeze(variables)["params"].items()}


# --------------------------------------------------------------------------- flax.nnx


class NnxCNN(nnx.Module):
    """`spec` as an nnx module on examples of `input_shape` (H, W, C); one attribute per layer
    with params, named conv1, ..., dense1, ..., so `nnx.state(m, nnx.Param)` is the pure tree."""

    def __init__(self, spec: models.Spec, input_shape, *, rngs: nnx.Rngs):
        self.spec = tuple(spec)
        names = models.layer_names(self.spec)
        in_shapes = [tuple(input_shape), *models.output_shapes(self.spec, input_shape)[:-1]]
        for layer, name, in_shape in zip(self.spec, names, in_shapes, strict=True):
            if name is None:
                continue
            if hasattr(self, name):
                raise ValueError(f"layer name {name!r} clashes with an NnxCNN attribute")
            if isinstance(layer, models.Conv):
                kernel_hw = ops.as_pair(layer.kernel_size, "kernel_size")
                stride_hw = ops.as_pair(layer.stride, "stride")
                module = nnx.Conv(
                    in_shape[-1],
                    layer.features,
                    kernel_hw,
                    stride_hw,
                    padding=layer.padding,
                    rngs=rngs,
                )
            else:
                module = nnx.Linear(in_shape[-1], layer.features, rngs=rngs)
            setattr(self, name, module)

    def __call__(self, x_NHWC):
        """logits_NK for a batch x_NHWC."""
        _check_batch(x_NHWC)
        h = x_NHWC
        for layer, name in zip(self.spec, models.layer_names(self.spec), strict=True):
            h = _stateless(layer, h) if name is None else getattr(self, name)(h)
        return h


def pure_to_nnx(params: dict, spec: models.Spec, input_shape) -> NnxCNN:
    """A new NnxCNN holding `params` (the arrays themselves, not copies). The module is built
    abstractly (eval_shape), so no random init is spent on values that are replaced at once."""
    module = nnx.eval_shape(lambda: NnxCNN(spec, input_shape, rngs=nnx.Rngs(0)))
    expected = jax.tree.map(jnp.shape, nnx_to_pure(module))
    given = jax.tree.map(jnp.shape, params)
    if given != expected:
        raise ValueError(
            f"params do not fit the spec on input {tuple(input_shape)}: shapes {given}, "
            f"expected {expected}; build them with cnnjax.models.init(key, spec, input_shape)"
        )
    nnx.update(module, params)
    return module


def nnx_to_pure(module_or_state) -> dict:
    """The pure params tree of an NnxCNN, or of an nnx.State of its Params (e.g. from nnx.grad)."""
    state = module_or_state
    if isinstance(state, nnx.Module):
        state = nnx.state(state, nnx.Param)
    return nnx.to_pure_dict(state)


# --------------------------------------------------------------------------- parity: pure vs Flax


class ParityRow(NamedTuple):
    framework: str  # "linen" or "nnx"
    quantity: str  # "logits", "loss" or "grad conv1/kernel", ...
    max_abs_diff: float  # max |flax - pure|
    tolerance: float  # FLOAT32_RTOL * max |pure|
    passed: bool


def _mean_ce(logits_NK, labels_N):
    return jnp.mean(losses.cross_entropy(logits_NK, labels_N))


@functools.partial(jax.jit, static_argnames="spec")
def _pure_values(params, x_NHWC, labels_N, spec):
    def loss_fn(p):
        logits_NK = models.batch_logits(p, x_NHWC, spec)
        return _mean_ce(logits_NK, labels_N), logits_NK

    (loss, logits_NK), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return logits_NK, loss, grads


@functools.partial(jax.jit, static_argnames="spec")
def _linen_values(variables, x_NHWC, labels_N, spec):
    def loss_fn(v):
        logits_NK = LinenCNN(spec).apply(v, x_NHWC)
        return _mean_ce(logits_NK, labels_N), logits_NK

    (loss, logits_NK), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables)
    return logits_NK, loss, grads


@nnx.jit
def _nnx_values(module, x_NHWC, labels_N):
    def loss_fn(m):
        logits_NK = m(x_NHWC)
        return _mean_ce(logits_NK, labels_N), logits_NK

    (loss, logits_NK), grads = nnx.value_and_grad(loss_fn, has_aux=True)(module)
    return logits_NK, loss, grads


def flax_values(params: dict, spec: models.Spec, x_NHWC, labels_N) -> dict:
    """{"pure" | "linen" | "nnx": (logits_NK, loss, grads)}: the batch-mean cross-entropy and its
    gradient w.r.t. the params (a pure tree), each framework from the same params.

    Each framework runs as its own jitted program (so XLA cannot merge one into another), at
    the highest matmul precision (ops.highest_precision: float32 is float32 on GPUs and TPUs
    too); the converters run outside jit, as a user would call them.
    """
    module = pure_to_nnx(params, spec, x_NHWC.shape[1:])
    with ops.highest_precision():
        values = {"pure": _pure_values(params, x_NHWC, labels_N, spec)}
        logits_NK, loss, grads = _linen_values(pure_to_linen(params), x_NHWC, labels_N, spec)
        values["linen"] = (logits_NK, loss, linen_to_pure(grads))
        logits_NK, loss, grads = _nnx_values(module, x_NHWC, labels_N)
        values["nnx"] = (logits_NK, loss, nnx_to_pure(grads))
    return values


def _row(framework, quantity, got, want, rtol) -> ParityRow:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:  # never broadcast one onto the other
        return ParityRow(framework, quantity, float("inf"), 0.0, False)
    diff = float(np.max(np.abs(got - want))) if want.size else 0.0
    tol = rtol * float(np.max(np.abs(want), initial=0.0))
    return ParityRow(framework, quantity, diff, tol, diff <= tol)


def parity_report(params, spec, x_NHWC, labels_N, *, rtol=FLOAT32_RTOL) -> list[ParityRow]:
    """Pure vs linen vs nnx on one batch: a row per framework for the logits, the loss and each
    gradient leaf, each passing when max |flax - pure| <= rtol * max |pure|."""
    values = flax_values(params, spec, x_NHWC, labels_N)
    logits, loss, grads = values["pure"]
    rows = []
    for framework in ("nnx", "linen"):
        f_logits, f_loss, f_grads = values[framework]
        rows.append(_row(framework, "logits", f_logits, logits, rtol))
        rows.append(_row(framework, "loss", f_loss, loss, rtol))
        for name in grads:
            for leaf in grads[name]:
                quantity = f"grad {name}/{leaf}"
                rows.append(_row(framework, quantity, f_grads[name][leaf], grads[name][leaf], rtol))
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
