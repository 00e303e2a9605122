"""A network is data: a spec (a tuple of layer descriptions, cnnjax.layers); init builds its params,
apply runs it, one example at a time, vmapped across the batch.

Legend: x_HWC one example, x_NHWC a batch, labels_N integer class ids, logits_K / logits_NK.
Params are nested dicts named by layer, Flax's names and layouts: {"conv1": {"kernel": w_HWIO,
"bias": b_O}, ..., "dense2": {"kernel": w_IO, "bias": b_O}}. State (BatchNorm's running
statistics) is a second dict of the same form, carried beside the params: {"batchnorm1": {"mean":
m_C, "var": v_C}}; {} for a spec without.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import layers, losses
from cnnjax.layers import EVAL, Context, Layer, chain
from cnnjax.output import tables

# The built-in kinds, also as models.Conv, models.Dense, ...
Conv, Dense, Flatten, MaxPool, AvgPool, ReLU = (
    layers.Conv, layers.Dense, layers.Flatten, layers.MaxPool, layers.AvgPool, layers.ReLU
)  # fmt: skip
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


def _block(features: int, stride: int = 1) -> layers.Residual:
    """Two 3x3 convolutions with BatchNorm (the convs without bias), ReLU between them, around
    a skip (a 1x1 projection where the stride or the width changes): He et al. 2016's basic
    block, its last ReLU after the sum (put in the spec)."""
    conv = lambda s: Conv(features, 3, s, "SAME", use_bias=False)  # noqa: E731
    return layers.Residual([conv(stride), layers.BatchNorm(), ReLU(), conv(1), layers.BatchNorm()])


# 28x28x1 -> conv 32@3x3, BN, ReLU, max-pool 2 -> 14x14x32 block -> 7x7x64 block -> 4x4x128
# block -> global average pool -> dense 10. About 10M multiply-adds per image (the reference
# CNN: 2.6M).
RESNET_SMALL: Spec = (
    Conv(32, 3, 1, "SAME", use_bias=False),
    layers.BatchNorm(),
    ReLU(),
    MaxPool(2),
    _block(32),
    ReLU(),
    _block(64, 2),
    ReLU(),
    _block(128, 2),
    ReLU(),
    layers.GlobalAvgPool(),
    Dense(10),
)

# Networks a config can name (config.model.spec); a user's module may add its own.
SPECS = {"reference": REFERENCE_CNN, "resnet_small": RESNET_SMALL}


# How a network applies each layer: its plain forward (jax.grad differentiates its ops), or its
# custom_vjp twin whose gradient is the layer's hand-derived vjp (cnnjax.layers.base).
PLAIN, HAND_DERIVED = layers.PLAIN, layers.HAND_DERIVED

# --------------------------------------------------------------------------- spec -> shapes, names

layer_names, output_shapes = chain.names, chain.output_shapes
layer_params, layer_states, has_params, has_state = (
    chain.layer_params,
    chain.layer_states,
    chain.has_params,
    chain.has_state,
)


def layer_output_shape(layer: Layer, in_shape) -> tuple[int, ...]:
    """One layer's output shape for one example, computed without running it."""
    if not isinstance(layer, Layer):
        raise TypeError(f"a spec holds Layer descriptions (Conv, Dense, ...), got {layer!r}")
    return tuple(layer.output_shape(tuple(in_shape)))


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
    """Params for `spec` on examples of `input_shape` (H, W, C): each layer's own init (kernels
    LeCun-normal, variance 1 / fan_in, Flax's default; biases zero). One key per layer, split
    from `key`."""
    return chain.init(key, spec, input_shape, dtype)


def init_state(spec: Spec, input_shape, dtype=jnp.float32) -> dict:
    """The state `spec` keeps besides its params (BatchNorm's running statistics) at its start;
    {} for a spec without."""
    return chain.init_state(spec, input_shape, dtype)


def layer_apply(layer: Layer, p, x, fns=PLAIN, ctx: Context = EVAL):
    """One layer on one example; `p` is its params dict ({} for layers without params)."""
    return fns(layer, p, x, ctx)


def apply(params: dict, x_HWC, spec: Spec, fns=PLAIN, *, state=None):
    """Logits of one example, in eval mode (running statistics, no dropout): the layers of
    `spec` in order, in the params' dtype (`as_input`). Train mode needs the batch:
    `batch_apply`."""
    h = as_input(params, x_HWC)
    return chain.apply(params, h, spec, Context(False, None, state), fns)[0]


# --------------------------------------------------------------------------- batches via vmap


def batch_apply(params, x_NHWC, spec: Spec, *, state=None, train=False, key=None, fns=PLAIN):
    """(logits_NK, state after the step): the one-example chain vmapped over the leading axis
    with the axis named `layers.BATCH` (batch statistics reduce across it). In train mode
    (`train`) BatchNorm normalizes by the batch's statistics and returns its updated running
    ones, Dropout drops with `key`; otherwise the state comes back unchanged."""
    x_NHWC = as_batch(params, x_NHWC, None, spec, averaged=False)
    ctx = Context(bool(train), key, state)
    run = lambda x: chain.apply(params, x, spec, ctx, fns)  # noqa: E731
    return jax.vmap(run, axis_name=layers.BATCH, out_axes=(0, None))(x_NHWC)


def batch_logits(params, x_NHWC, spec: Spec, fns=PLAIN, *, state=None, train=False, key=None):
    """logits_NK of `batch_apply` (an empty batch gives shape (0, K))."""
    return batch_apply(params, x_NHWC, spec, state=state, train=train, key=key, fns=fns)[0]


def per_example_losses(
    params, x_NHWC, labels_N, spec: Spec, *, label_smoothing=0.0, fns=PLAIN, **mode
):
    """Cross-entropy of each example, shape (N,); the inputs checked by `as_batch`; `mode` is
    `batch_apply`'s state, train and key."""
    as_batch(params, x_NHWC, labels_N, spec, averaged=False)
    logits_NK = batch_logits(params, x_NHWC, spec, fns, **mode)
    ce = lambda z, y: losses.cross_entropy(z, y, label_smoothing=label_smoothing)  # noqa: E731
    return jax.vmap(ce)(logits_NK, labels_N)


def loss(params, x_NHWC, labels_N, spec: Spec, *, label_smoothing=0.0, fns=PLAIN, **mode):
    """The batch-mean cross-entropy: what training differentiates. An empty batch (mean NaN)
    is a ValueError, as are out-of-range labels where concrete. Under jit they go unchecked: such
    a label's one-hot target is all zeros, so unsmoothed its example adds 0 (and counts in N).
    `mode`: `batch_apply`'s state, train and key."""
    as_batch(params, x_NHWC, None, spec, averaged=True)  # labels: per_example_losses checks them
    per_example = per_example_losses(
        params, x_NHWC, labels_N, spec, label_smoothing=label_smoothing, fns=fns, **mode
    )
    return jnp.mean(per_example)


def per_example_grads(
    params, x_NHWC, labels_N, spec: Spec, *, label_smoothing=0.0, fns=PLAIN, state=None
):
    """Gradient of each example's loss, in eval mode: the params pytree with a leading axis N
    on every leaf (inputs checked as in `per_example_losses`)."""
    x_NHWC = as_batch(params, x_NHWC, labels_N, spec, averaged=False)

    def one(x_HWC, label):
        def example_loss(p):
            logits = apply(p, x_HWC, spec, fns, state=state)
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
    rows, total = [], 0
    counts = chain.num_params(spec, input_shape)
    shapes = output_shapes(spec, input_shape)
    for layer, name, shape, count in zip(spec, layer_names(spec), shapes, counts, strict=True):
        total += count
        rows.append((name or type(layer).__name__.lower(), str(shape), f"{count:,}"))
    rows.append(("total", "", f"{total:,}"))
    return tables.format_table(("layer", "output shape", "params"), rows, right=(2,))
