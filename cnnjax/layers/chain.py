"""A spec is a chain of layers: its names, shapes, params and state, and the chain run forward and
backward on one example or on a batch, through the layer protocol (cnnjax.layers.base). Networks
(cnnjax.models, cnnjax.backprop) and layers holding a sub-chain (Residual) are built on it.

Params and state are dicts keyed by layer name (conv1, batchnorm1, ...: see `names`), each a
layer's own dict: {"conv1": {"kernel": w_HWIO, "bias": b_O}, ...}; a Residual's holds its body's.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from cnnjax.layers.base import BATCH, EVAL, PLAIN, Context, Layer

# --------------------------------------------------------------------------- names and shapes


def has_params(layer: Layer) -> bool:
    return layer.has_params()


def has_state(layer: Layer) -> bool:
    return layer.has_state()


def names(spec) -> list[str | None]:
    """conv1, conv2, ..., dense1, ... in order (a layer's prefix and its count, or its own
    name) for layers with params or state; None for the others."""
    found, counts = [], {}
    for layer in spec:
        if not isinstance(layer, Layer):
            raise TypeError(f"a spec holds Layer descriptions (Conv, Dense, ...), got {layer!r}")
        if not (has_params(layer) or has_state(layer)):
            found.append(None)
            continue
        prefix = layer.prefix or type(layer).__name__.lower()
        counts[prefix] = counts.get(prefix, 0) + 1
        found.append(layer.name or f"{prefix}{counts[prefix]}")
    given = [n for n in found if n]
    if len(set(given)) != len(given):
        raise ValueError(f"layer names must be unique, got {given}")
    return found


def output_shapes(spec, in_shape) -> list[tuple[int, ...]]:
    """Every layer's output shape, in order; raises on the first layer that does not fit."""
    shapes, shape = [], tuple(in_shape)
    for layer in spec:
        shape = tuple(layer.output_shape(shape))
        shapes.append(shape)
    return shapes


def input_shapes(spec, in_shape) -> list[tuple[int, ...]]:
    return [tuple(in_shape), *output_shapes(spec, in_shape)[:-1]]


# --------------------------------------------------------------------------- params and state


def init(key, spec, in_shape, dtype=jnp.float32) -> dict:
    """Each layer's `init` on its input shape, one key per layer split from `key`."""
    keys = jax.random.split(key, len(spec))
    steps = zip(spec, names(spec), input_shapes(spec, in_shape), keys, strict=True)
    return {
        name: layer.init(k, shape, dtype) for layer, name, shape, k in steps if has_params(layer)
    }


def init_state(spec, in_shape, dtype=jnp.float32) -> dict:
    """Each stateful layer's `init_state` ({} for a spec without state)."""
    steps = zip(spec, names(spec), input_shapes(spec, in_shape), strict=True)
    return {
        name: layer.init_state(shape, dtype) for layer, name, shape in steps if has_state(layer)
    }


def _split(tree, spec, what: str, keeps, fix: str) -> list:
    tree = {} if tree is None else tree
    expected = [n for layer, n in zip(spec, names(spec), strict=True) if keeps(layer)]
    missing = [n for n in expected if n not in tree]
    extra = sorted(set(tree) - set(expected))
    if missing or extra:
        raise ValueError(
            f"{what} do not match the spec: missing {missing}, unexpected {extra}; {fix}"
        )
    return [tree[n] if keeps(layer) else {} for layer, n in zip(spec, names(spec), strict=True)]


def layer_params(params, spec) -> list:
    """Each layer's params dict ({} for layers without), checked against the spec."""
    fix = "build them with cnnjax.models.init(key, spec, input_shape)"
    return _split(params, spec, "params", has_params, fix)


def layer_states(state, spec) -> list:
    """Each layer's state dict ({} for layers without), checked against the spec."""
    fix = "pass state=cnnjax.models.init_state(spec, input_shape), or a trained network's state"
    return _split(state, spec, "state", has_state, fix)


def contexts(spec, ctx: Context) -> list[Context]:
    """Each layer's context: the mode, its own key (ctx.key folded with its position; None if
    ctx has none) and its own state."""
    states = layer_states(ctx.state, spec)
    keys = [None if ctx.key is None else jax.random.fold_in(ctx.key, i) for i in range(len(spec))]
    return [ctx._replace(key=k, state=s) for k, s in zip(keys, states, strict=True)]


def _gathered(spec, layer_values, keeps) -> dict:
    return {
        n: v for layer, n, v in zip(spec, names(spec), layer_values, strict=True) if keeps(layer)
    }


# --------------------------------------------------------------------------- one example


def apply(params, x, spec, ctx: Context = EVAL, fns=PLAIN):
    """(the chain's output, its state after this step) on one example, each layer applied by
    `fns` (PLAIN or HAND_DERIVED). In train mode stateful layers give their `next_state`; else
    the state is returned as given. Under vmap(axis_name=BATCH) for layers that need the batch."""
    h, new_states = x, []
    steps = zip(spec, layer_params(params, spec), contexts(spec, ctx), strict=True)
    for layer, p, c in steps:
        new_states.append(layer.next_state(p, h, c) if ctx.train else c.state)
        h = fns(layer, p, h, c)
    return h, _gathered(spec, new_states, has_state)


def vjp(params, x, dy, spec, ctx: Context = EVAL):
    """(dx, dparams) of the chain on one example: forward keeping each layer's input, then each
    layer's `vjp` from the last layer to the first."""
    layer_ps, ctxs, inputs, h = layer_params(params, spec), contexts(spec, ctx), [], x
    for layer, p, c in zip(spec, layer_ps, ctxs, strict=True):
        inputs.append(h)
        h = layer.apply(p, h, c)
    dparams = []
    for layer, p, c, x_in in reversed(list(zip(spec, layer_ps, ctxs, inputs, strict=True))):
        dy, dp = layer.vjp(p, x_in, dy, c)
        dparams.append(dp)
    return dy, _gathered(spec, dparams[::-1], has_params)


# --------------------------------------------------------------------------- a batch


def forward_batch(params, x_N, spec, ctx: Context = EVAL):
    """(output_N, new state, each layer's input_N): the chain layer by layer, each layer's
    one-example `apply` vmapped over the batch (axis BATCH), keeping the inputs for backprop."""
    h, inputs, new_states = x_N, [], []
    steps = zip(spec, layer_params(params, spec), contexts(spec, ctx), strict=True)
    for layer, p, c in steps:
        inputs.append(h)
        if ctx.train and has_state(layer):  # a batch mean: the same for every example
            update = lambda x, layer=layer, p=p, c=c: layer.next_state(p, x, c)  # noqa: E731
            new_states.append(jax.vmap(update, axis_name=BATCH, out_axes=None)(h))
        else:
            new_states.append(c.state)
        h = jax.vmap(lambda x, layer=layer, p=p, c=c: layer.apply(p, x, c), axis_name=BATCH)(h)
    return h, _gathered(spec, new_states, has_state), inputs


def vjp_batch(params, inputs, dy_N, spec, ctx: Context = EVAL):
    """(dx_N, dparams summed over the batch): each layer's `vjp_batch` from the last layer to
    the first, on the inputs `forward_batch` kept."""
    layer_ps, ctxs, dparams = layer_params(params, spec), contexts(spec, ctx), []
    for layer, p, c, x_in in reversed(list(zip(spec, layer_ps, ctxs, inputs, strict=True))):
        dy_N, dp = layer.vjp_batch(p, x_in, dy_N, c)
        dparams.append(dp)
    return dy_N, _gathered(spec, dparams[::-1], has_params)


def num_params(spec, in_shape) -> list[int]:
    """Each layer's parameter count, from shapes alone (jax.eval_shape of its init)."""
    counts = []
    for layer, shape in zip(spec, input_shapes(spec, in_shape), strict=True):
        p = jax.eval_shape(
            lambda layer=layer, shape=shape: layer.init(jax.random.key(0), shape, jnp.float32)
        )
        counts.append(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(p)))
    return counts


# --------------------------------------------------------------------------- Flax
# The chain as Flax layers, for cnnjax.flax_models and for layers holding a sub-chain. Flax is
# imported by the layers' own methods, only when a caller asks for a Flax module.


def nnx_key(spec, i: int) -> str:
    """The attribute an nnx chain keeps layer i's module under: its name, or for a layer with a
    module but neither params nor state (Dropout), "layer<i>"."""
    return names(spec)[i] or f"layer{i}"


def linen_apply(spec, x_NHWC, train: bool):
    """The chain on a batch, called inside a flax.linen compact method: each layer with params or
    state as its linen module, named as its params (`layer.linen(name)`), the others with
    Flax's functions (`layer.flax`)."""
    h = x_NHWC
    for layer, name in zip(spec, names(spec), strict=True):
        h = layer.linen(name)(h, train) if name else layer.flax(h, train=train)
    return h


def nnx_modules(spec, in_shape, rngs) -> dict:
    """{nnx_key: module} for each layer whose `nnx(in_shape, rngs)` gives a module; an nnx chain
    sets them as its attributes, so nnx.state(chain, nnx.Param) is the pure params tree."""
    modules, layer_names = {}, names(spec)
    steps = zip(spec, layer_names, input_shapes(spec, in_shape), strict=True)
    for i, (layer, name, shape) in enumerate(steps):
        module = layer.nnx(shape, rngs)
        if module is None:
            continue
        if name is None and nnx_key(spec, i) in layer_names:
            raise ValueError(f"a layer named {nnx_key(spec, i)!r} clashes with layer {i}'s module")
        modules[nnx_key(spec, i)] = module
    return modules


def nnx_apply(spec, owner, x_NHWC):
    """The chain on a batch with the nnx modules `owner` holds as attributes (`nnx_modules`),
    and Flax's functions for the layers without one; train or eval as the modules are set
    (nnx's module.train() / module.eval())."""
    h = x_NHWC
    for i, layer in enumerate(spec):
        module = getattr(owner, nnx_key(spec, i), None)
        h = module(h) if module is not None else layer.flax(h, train=False)
    return h
