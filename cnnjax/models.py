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
    """Logits of one example: the layers of `spec` in order."""
    h = x_HWC
    for layer, p in zip(spec, layer_params(params, spec), strict=True):
        h = layer_apply(layer, p, h, fns)
    return h


# --------------------------------------------------------------------------- batches via vmap


def batch_logits(params, x_NHWC, spec: Spec, fns: LayerFns = PLAIN):
    """logits_NK: `apply` vmapped over the leading axis."""
    return jax.vmap(lambda x: apply(params, x, spec, fns))(x_NHWC)


def per_example_losses(params, x_NHWC, labels_N, spec: Spec, *, label_smoothing=0.0, fns=PLAIN):
    """Cross-entropy of each example, shape (N,)."""

    def one(x_HWC, label):
        return losses.cross_entropy(
            apply(params, x_HWC, spec, fns), label, label_smoothing=label_smoothing
        )

    return jax.vmap(one)(x_NHWC, labels_N)


def loss(params, x_NHWC, labels_N, spec: Spec, *, label_smoothing=0.0, fns=PLAIN):
    """The batch-mean cross-entropy: what training differentiates."""
    per_example = per_example_losses(
        params, x_NHWC, labels_N, spec, label_smoothing=label_smoothing, fns=fns
    )
    return jnp.mean(per_example)


def per_example_grads(params, x_NHWC, labels_N, spec: Spec, *, label_smoothing=0.0, fns=PLAIN):
    """Gradient of each example's loss: the params pytree with a leading axis N on every leaf."""

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
