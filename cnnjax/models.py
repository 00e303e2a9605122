"""A network is data: a spec (a tuple of layer descriptions); init builds its params, apply runs it.

Legend: x_HWC one example, x_NHWC a batch, labels_N integer class ids, logits_K / logits_NK.
Params are nested dicts named by layer, Flax's names and layouts: {"conv1": {"kernel": w_HWIO,
"bias": b_O}, ..., "dense2": {"kernel": w_IO, "bias": b_O}}.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import losses, ops
from cnnjax.output import tables

# --------------------------------------------------------------------------- layer descriptions


def _frozen(value):
    """Lists (e.g. from a config) become tuples, so a spec is hashable and can be a static arg."""
    return tuple(_frozen(v) for v in value) if isinstance(value, list | tuple) else value


@dataclasses.dataclass(frozen=True)
class Layer:
    name: str | None = dataclasses.field(default=None, kw_only=True)

    def __post_init__(self):
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, _frozen(getattr(self, field.name)))


@dataclasses.dataclass(frozen=True)
class Conv(Layer):
    features: int
    kernel_size: int | ops.Pair = 3
    stride: int | ops.Pair = 1
    padding: ops.Padding = "VALID"


@dataclasses.dataclass(frozen=True)
class Dense(Layer):
    features: int


@dataclasses.dataclass(frozen=True)
class MaxPool(Layer):
    window: int | ops.Pair = 2
    stride: int | ops.Pair | None = None  # None: the window (non-overlapping)
    padding: ops.Padding = "VALID"


@dataclasses.dataclass(frozen=True)
class AvgPool(Layer):
    window: int | ops.Pair = 2
    stride: int | ops.Pair | None = None
    padding: ops.Padding = "VALID"
    count_include_pad: bool = True


@dataclasses.dataclass(frozen=True)
class ReLU(Layer):
    pass


@dataclasses.dataclass(frozen=True)
class Flatten(Layer):
    pass


Spec = tuple[Layer, ...]

# 28x28x1 -> conv 32@3x3 -> ReLU -> max-pool 2 -> conv 64@3x3 -> ReLU -> max-pool 2
# -> flatten 1600 -> dense 128 -> ReLU -> dense 10: 225,034 parameters.
REFERENCE_CNN: Spec = (
    Conv(32, 3),
    ReLU(),
    MaxPool(2),
    Conv(64, 3),
    ReLU(),
    MaxPool(2),
    Flatten(),
    Dense(128),
    ReLU(),
    Dense(10),
)
REFERENCE_INPUT_SHAPE = (28, 28, 1)

# Networks a config can name (config.model.spec).
SPECS = {"reference": REFERENCE_CNN}


class LayerFns(NamedTuple):
    """The op each layer kind calls. `apply` takes a table, so the same network can run on the
    plain ops or on their hand-derived custom_vjp twins (`cnnjax.grads.HAND_DERIVED`)."""

    conv2d: Callable
    max_pool: Callable
    avg_pool: Callable
    relu: Callable
    dense: Callable
    flatten: Callable


PLAIN = LayerFns(ops.conv2d, ops.max_pool, ops.avg_pool, ops.relu, ops.dense, ops.flatten)

# --------------------------------------------------------------------------- spec -> shapes, names


def has_params(layer: Layer) -> bool:
    return isinstance(layer, Conv | Dense)


def layer_names(spec: Spec) -> list[str | None]:
    """conv1, conv2, ..., dense1, ... in order (or a layer's own name); None for layers
    without params."""
    names, counts = [], {}
    for layer in spec:
        if not isinstance(layer, Layer):
            raise TypeError(f"a spec holds Layer descriptions (Conv, Dense, ...), got {layer!r}")
        if not has_params(layer):
            names.append(None)
            continue
        kind = "conv" if isinstance(layer, Conv) else "dense"
        counts[kind] = counts.get(kind, 0) + 1
        names.append(layer.name or f"{kind}{counts[kind]}")
    given = [n for n in names if n]
    if len(set(given)) != len(given):
        raise ValueError(f"layer names must be unique, got {given}")
    return names


def _kernel_shape(layer: Layer, in_shape) -> tuple[int, ...]:
    if isinstance(layer, Conv):
        return (*ops.as_pair(layer.kernel_size, "kernel_size"), in_shape[-1], layer.features)
    return (in_shape[-1], layer.features)


def layer_output_shape(layer: Layer, in_shape) -> tuple[int, ...]:
    """One layer's output shape for one example, computed without running it."""
    match layer:
        case Conv():
            w_shape = _kernel_shape(layer, in_shape)
            return ops.conv2d_shape(in_shape, w_shape, stride=layer.stride, padding=layer.padding)
        case MaxPool() | AvgPool():
            return ops.pool_shape(in_shape, layer.window, layer.stride, layer.padding)
        case Dense():
            if len(in_shape) != 1:
                raise ValueError(
                    f"Dense needs a flat input but gets shape {tuple(in_shape)}; "
                    "put Flatten() before it"
                )
            return (layer.features,)
        case Flatten():
            return (math.prod(in_shape),)
        case ReLU():
            return tuple(in_shape)
    raise TypeError(f"unknown layer {layer!r}")


def output_shapes(spec: Spec, input_shape) -> list[tuple[int, ...]]:
    """Every layer's output shape, in order; raises on the first layer that does not fit."""
    shapes, shape = [], tuple(input_shape)
    for layer in spec:
        shape = layer_output_shape(layer, shape)
        shapes.append(shape)
    return shapes


# --------------------------------------------------------------------------- the boundary
# Checked before a vmap traces the inputs, and under jit too, but for label values (traced).


def as_input(params, x):
    """x in the params' dtype (that of their first leaf). A narrower float (float16 or bfloat16
    images, float32 params) is cast up, exactly; integer images are refused (their scale is the
    caller's to choose), as are floats the params' dtype would round (a cast to ask for)."""
    x_dtype = jax.dtypes.canonicalize_dtype(jnp.result_type(x))
    p_dtype = next((leaf.dtype for leaf in jax.tree.leaves(params)), None)
    if not jnp.issubdtype(x_dtype, jnp.floating):
        raise ValueError(
            f"the network takes float images, got dtype {x_dtype}; scale 0..255 pixels to "
            f"floats: x.astype(jnp.{p_dtype or 'float32'}) / 255 (cnnjax.training.train.to_float)"
        )
    if p_dtype is None or x_dtype == p_dtype:
        return x
    if not np.can_cast(x_dtype, p_dtype, casting="safe"):  # exactly, value for value
        raise ValueError(
            f"images of dtype {x_dtype} do not fit the params' {p_dtype} exactly; cast one to the "
            f"other: x.astype(jnp.{p_dtype}) or jax.tree.map(lambda p: p.astype(jnp.{x_dtype}), "
            "params)"
        )
    return jnp.asarray(x).astype(p_dtype)


def as_batch(params, x_NHWC, labels_N, spec: Spec, *, averaged: bool):
    """x_NHWC through `as_input`, after checking one label per example, integer labels in [0, K)
    for the spec's K outputs (`losses.check_labels`: concrete labels only) and, for a mean over
    the batch (`averaged`), at least one example."""
    shape = tuple(jnp.shape(x_NHWC))
    if averaged and shape[:1] in ((), (0,)):
        raise ValueError(f"x_NHWC of shape {shape} holds no examples; a batch mean needs one")
    x_NHWC = as_input(params, x_NHWC)
    if labels_N is not None:
        if jnp.shape(labels_N)[:1] != shape[:1]:
            got = tuple(jnp.shape(labels_N))
            raise ValueError(f"labels_N must hold a label per example of x_NHWC {shape}, got {got}")
        out_shape = output_shapes(spec, shape[1:])[-1] if spec else shape
        losses.check_labels(labels_N, out_shape[-1])
    return x_NHWC


# --------------------------------------------------------------------------- init and apply


def init(key, spec: Spec, input_shape, dtype=jnp.float32) -> dict:
    """Params for `spec` on examples of `input_shape` (H, W, C): kernels LeCun-normal
    (variance 1 / fan_in, Flax's default), biases zero. One key per layer, split from `key`."""
    params, shape = {}, tuple(input_shape)
    keys = jax.random.split(key, len(spec))
    for layer, name, layer_key in zip(spec, layer_names(spec), keys, strict=True):
        if has_params(layer):
            kernel_init = jax.nn.initializers.lecun_normal()
            params[name] = {
                "kernel": kernel_init(layer_key, _kernel_shape(layer, shape), dtype),
                "bias": jnp.zeros((layer.features,), dtype),
            }
        shape = layer_output_shape(layer, shape)
    return params


def layer_apply(layer: Layer, p, x, fns: LayerFns = PLAIN):
    """One layer on one example; `p` is its params dict (None for layers without params)."""
    match layer:
        case Conv():
            return fns.conv2d(x, p["kernel"], p["bias"], stride=layer.stride, padding=layer.padding)
        case Dense():
            return fns.dense(x, p["kernel"], p["bias"])
        case MaxPool():
            return fns.max_pool(x, layer.window, layer.stride, layer.padding)
        case AvgPool():
            include = layer.count_include_pad
            return fns.avg_pool(
                x, layer.window, layer.stride, layer.padding, count_include_pad=include
            )
        case ReLU():
            return fns.relu(x)
        case Flatten():
            return fns.flatten(x)
    raise TypeError(f"unknown layer {layer!r}")


def layer_params(params: dict, spec: Spec) -> list:
    """Each layer's params dict (None for layers without), checked against the spec."""
    names = layer_names(spec)
    missing = [n for n in names if n and n not in params]
    extra = sorted(set(params) - set(filter(None, names)))
    if missing or extra:
        raise ValueError(
            f"params do not match the spec: missing {missing}, unexpected {extra}; "
            "build them with cnnjax.models.init(key, spec, input_shape)"
        )
    return [params[n] if n else None for n in names]


def apply(params: dict, x_HWC, spec: Spec, fns: LayerFns = PLAIN):
    """Logits of one example: the layers of `spec` in order, in the params' dtype (`as_input`)."""
    h = as_input(params, x_HWC)
    for layer, p in zip(spec, layer_params(params, spec), strict=True):
        h = layer_apply(layer, p, h, fns)
    return h


# --------------------------------------------------------------------------- batches via vmap


def batch_logits(params, x_NHWC, spec: Spec, fns: LayerFns = PLAIN):
    """logits_NK: `apply` vmapped over the leading axis (an empty batch gives shape (0, K))."""
    x_NHWC = as_batch(params, x_NHWC, None, spec, averaged=False)
    return jax.vmap(lambda x: apply(params, x, spec, fns))(x_NHWC)


def per_example_losses(params, x_NHWC, labels_N, spec: Spec, *, label_smoothing=0.0, fns=PLAIN):
    """Cross-entropy of each example, shape (N,); the inputs checked by `as_batch`."""
    x_NHWC = as_batch(params, x_NHWC, labels_N, spec, averaged=False)

    def one(x_HWC, label):
        return losses.cross_entropy(
            apply(params, x_HWC, spec, fns), label, label_smoothing=label_smoothing
        )

    return jax.vmap(one)(x_NHWC, labels_N)


def loss(params, x_NHWC, labels_N, spec: Spec, *, label_smoothing=0.0, fns=PLAIN):
    """The batch-mean cross-entropy: what training differentiates. An empty batch (mean NaN)
    is a ValueError, as are out-of-range labels where concrete. Under jit they go unchecked: such
    a label's one-hot target is all zeros, so unsmoothed its example adds 0 (and counts in N)."""
    as_batch(params, x_NHWC, None, spec, averaged=True)  # labels: per_example_losses checks them
    per_example = per_example_losses(
        params, x_NHWC, labels_N, spec, label_smoothing=label_smoothing, fns=fns
    )
    return jnp.mean(per_example)


def per_example_grads(params, x_NHWC, labels_N, spec: Spec, *, label_smoothing=0.0, fns=PLAIN):
    """Gradient of each example's loss: the params pytree with a leading axis N on every leaf
    (inputs checked as in `per_example_losses`)."""
    x_NHWC = as_batch(params, x_NHWC, labels_N, spec, averaged=False)

    def one(x_HWC, label):
        def example_loss(p):
            logits = apply(p, x_HWC, spec, fns)
            return losses.cross_entropy(logits, label, label_smoothing=label_smoothing)

        return jax.grad(example_loss)(params)

    return jax.vmap(one)(x_NHWC, labels_N)


def per_example_grad_norms(params, x_NHWC, labels_N, spec: Spec, **kwargs):
    """Global L2 norm of each example's gradient, shape (N,)."""
    grads = per_example_grads(params, x_NHWC, labels_N, spec, **kwargs)
    squares = [jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=1) for g in jax.tree.leaves(grads)]
    return jnp.sqrt(sum(squares))


def num_params(params) -> int:
    return sum(int(leaf.size) for leaf in jax.tree.leaves(params))


def summary(spec: Spec, input_shape) -> str:
    """A table of layers, output shapes and parameter counts, computed without running."""
    rows, shape, total = [], tuple(input_shape), 0
    for layer, name in zip(spec, layer_names(spec), strict=True):
        count = 0
        if has_params(layer):
            kernel = _kernel_shape(layer, shape)
            count = math.prod(kernel) + layer.features
        shape = layer_output_shape(layer, shape)
        total += count
        rows.append((name or type(layer).__name__.lower(), str(shape), f"{count:,}"))
    rows.append(("total", "", f"{total:,}"))
    return tables.format_table(("layer", "output shape", "params"), rows, right=(2,))
