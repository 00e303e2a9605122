"""The layer protocol: what a layer kind defines, in one place, so that networks, backprop, the
gradient checks and the Flax modules use any kind alike.

A layer kind is a frozen dataclass (its description: hashable, so a spec is a static argument)
that subclasses `Layer` and defines, for ONE example:

    output_shape(in_shape)            its output shape, without running it
    has_params() / has_state()        whether it has params / state (default: whether its kind
                                      defines init / init_state)
    init(key, in_shape, dtype)        its params: a dict of arrays ({} for none)
    init_state(in_shape, dtype)       its state, arrays it keeps but does not train ({} for none)
    apply(p, x, ctx)                  its output, with jax.lax / jax.numpy
    autodiff_reference(p, x, ctx)     the same output in the form the gradient checks
                                      differentiate (default: apply; a kind whose apply is
                                      written for jax.grad's speed keeps its plain form here)
    next_state(p, x, ctx)             its state after a train-mode step (default: unchanged)
    vjp(p, x, dy, ctx)                the hand-derived (dx, dp), the derivation in its docstring
    flax(x_NHWC, train=)              the same layer on a batch with Flax's functions, or
    linen(name) / nnx(in_shape, rngs) its Flax module, for kinds with params or state
    gradcheck_cases(rng)              (classmethod) random (layer, in_shape) cases to check

and is registered with `@register`. `ctx` (a `Context`) says whether the network trains, and
carries the layer's random key and its state. Every one-example function runs under
`jax.vmap(..., axis_name=BATCH)`, so a layer that needs the whole batch (batch normalization)
reduces across it with `jax.lax.pmean(..., BATCH)`, the JAX way; its state updates are such
batch means, the same for every example. Under data parallelism (the batch split over devices by
sharding) the same reduction spans the devices.

`PLAIN` and `HAND_DERIVED` are the two ways a network applies a layer: the plain forward (jax.grad
differentiates it) or a jax.custom_vjp twin whose gradient is the layer's own `vjp`.
`AUTODIFF_REFERENCE` applies each layer's `autodiff_reference`: the gradient checks' autodiff.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

BATCH = "batch"  # the vmapped axis of examples, for layers that reduce across the batch

# --------------------------------------------------------------------------- descriptions


def _frozen(value):
    """Lists (e.g. from a config) become tuples, so a spec is hashable and can be a static arg."""
    return tuple(_frozen(v) for v in value) if isinstance(value, list | tuple) else value


class Context(NamedTuple):
    """How a layer runs: `train` (batch statistics, dropout on) or not; `key` its own random key
    (None if the network was given none); `state` its own state ({} for layers without);
    `batch_size` the size of the BATCH axis where the caller had to say it (see HAND_DERIVED).
    """

    train: bool = False
    key: Any = None
    state: Any = None
    batch_size: int | None = None


EVAL = Context()


class Case(NamedTuple):
    """A gradient-check case: a layer, the shape of one example, how many examples (layers that
    couple examples need several), and the kinds of tie-heavy data (gradcheck.TIE_KINDS) its
    rule has a policy for (a kink at which FD means nothing)."""

    layer: Layer
    in_shape: tuple[int, ...]
    batch: int = 1
    tie_kinds: tuple[str, ...] = ()
    train: bool = False


@dataclasses.dataclass(frozen=True)
class Layer:
    """Base of every layer kind (see the module docstring). `prefix` names the layers of a kind
    that have params or state: conv1, conv2, ...; kinds with neither leave it empty."""

    name: str | None = dataclasses.field(default=None, kw_only=True)
    prefix: ClassVar[str] = ""

    def __post_init__(self):
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, _frozen(getattr(self, field.name)))

    # ---- shape, params, state
    def output_shape(self, in_shape) -> tuple[int, ...]:
        raise NotImplementedError(f"{type(self).__name__} does not define output_shape")

    def has_params(self) -> bool:
        """Whether this layer has params, and so a name and an entry in the network's params:
        by default whether its kind defines `init`."""
        return type(self).init is not Layer.init

    def has_state(self) -> bool:
        """Whether this layer keeps state, and so an entry in the network's state: by default
        whether its kind defines `init_state`."""
        return type(self).init_state is not Layer.init_state

    def init(self, key, in_shape, dtype) -> dict:
        return {}

    def init_state(self, in_shape, dtype) -> dict:
        return {}

    # ---- one example
    def apply(self, p, x, ctx: Context):
        raise NotImplementedError(f"{type(self).__name__} does not define apply")

    def autodiff_reference(self, p, x, ctx: Context):
        """`apply` in the form the gradient checks differentiate as their reference: apply
        itself, unless a kind's apply is a formulation chosen for jax.grad's speed (MaxPool's
        selects); then the plain one (MaxPool's lax.reduce_window), tested equal to apply, so
        that hand vs autodiff still compares two derivations."""
        return self.apply(p, x, ctx)

    def next_state(self, p, x, ctx: Context):
        return ctx.state

    def vjp(self, p, x, dy, ctx: Context):
        raise NotImplementedError(f"{type(self).__name__} does not define its vjp")

    def vjp_batch(self, p, x_N, dy_N, ctx: Context):
        """(dx_N, dp summed over the examples): `vjp` vmapped. Kinds with a faster batched form
        (one op summing the examples' kernel gradients) override it, tested equal."""
        dx_N, dp_N = jax.vmap(lambda x, dy: self.vjp(p, x, dy, ctx), axis_name=BATCH)(x_N, dy_N)
        return dx_N, jax.tree.map(lambda g: jnp.sum(g, axis=0), dp_N)

    # ---- Flax
    def flax(self, x_NHWC, *, train: bool):
        """This layer on a batch with Flax's own functions (kinds without params or state)."""
        raise NotImplementedError(f"{type(self).__name__} has no Flax counterpart")

    def linen(self, name: str):
        """A flax.linen module for this layer (kinds with params or state): called on a batch
        as module(x_NHWC, train=...); its variables named as this layer's params and state."""
        return None

    def nnx(self, in_shape, rngs):
        """A flax.nnx module for this layer (kinds with params or state), called on a batch;
        nnx.state(module, nnx.Param) is this layer's params, its BatchStat its state."""
        return None

    # ---- gradient checks
    @classmethod
    def gradcheck_cases(cls, rng) -> list[Case]:
        """The cases of one random draw from `rng` (a numpy Generator) for the gradient checks;
        each kind draws the geometries its rule must handle."""
        return []


# --------------------------------------------------------------------------- registry

KINDS: dict[str, type[Layer]] = {}


def register(kind: type[Layer]) -> type[Layer]:
    """Make a layer kind known by its class name (a decorator): the gradient checks draw cases
    for every registered kind, and `experiments.gradcheck --module m` checks those m registers.
    A kind's name is unique; registering the same class again is harmless."""
    if not (isinstance(kind, type) and issubclass(kind, Layer)):
        raise TypeError(f"register takes a Layer subclass, got {kind!r}")
    if not dataclasses.is_dataclass(kind) or not kind.__dataclass_params__.frozen:
        raise TypeError(
            f"{kind.__name__} must be a frozen dataclass: @dataclasses.dataclass(frozen=True)"
        )
    known = KINDS.get(kind.__name__)
    if known is not None and known is not kind:
        raise ValueError(f"a layer kind named {kind.__name__} is registered already ({known!r})")
    KINDS[kind.__name__] = kind
    return kind


# --------------------------------------------------------------------------- applying a layer


def PLAIN(layer: Layer, p, x, ctx: Context):
    """The layer's own forward: jax.grad differentiates its ops."""
    return layer.apply(p, x, ctx)


def AUTODIFF_REFERENCE(layer: Layer, p, x, ctx: Context):
    """The layer's `autodiff_reference`: jax.grad through it is the gradient checks' autodiff."""
    return layer.autodiff_reference(p, x, ctx)


def HAND_DERIVED(layer: Layer, p, x, ctx: Context):
    """The same forward as a jax.custom_vjp whose backward pass is `layer.vjp`: jax.grad of a
    network applied this way uses every hand-derived rule. The context's key and state travel as
    arguments (their cotangents zero), so the twin works under vmap and jit alike.

    JAX runs a custom_vjp's backward pass under vmap outside the axis's environment (jax 0.10,
    0.12): there jax.lax.psum of the examples' values works, but pmean, axis_size and all_gather,
    which ask the axis its size, fail. So the twin reads the size in the forward pass and hands it
    to `vjp` as ctx.batch_size (None outside a vmap over BATCH)."""
    return _twin(layer, ctx.train, _batch_size())(p, x, _key_data(ctx.key), ctx.state)


def _batch_size() -> int | None:
    try:
        return jax.lax.axis_size(BATCH)
    except NameError:  # one example, not under vmap(axis_name=BATCH)
        return None


def _key_data(key):
    if key is None or not jnp.issubdtype(jnp.result_type(key), jax.dtypes.prng_key):
        return key
    return jax.random.key_data(key)


def _as_key(data):
    if data is None or jnp.issubdtype(jnp.result_type(data), jax.dtypes.prng_key):
        return data
    return jax.random.wrap_key_data(data)


def _zero_cotangent(tree):
    def zero(leaf):
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            return jnp.zeros_like(leaf)
        return np.zeros(jnp.shape(leaf), jax.dtypes.float0)

    return jax.tree.map(zero, tree)


def _twin(layer: Layer, train: bool, batch_size: int | None):
    @jax.custom_vjp
    def twin(p, x, key, state):
        return layer.apply(p, x, Context(train, _as_key(key), state, batch_size))

    def forward(p, x, key, state):
        return twin(p, x, key, state), (p, x, key, state)

    def backward(residuals, dy):
        p, x, key, state = residuals
        dx, dp = layer.vjp(p, x, dy, Context(train, _as_key(key), state, batch_size))
        return dp, dx, _zero_cotangent(key), _zero_cotangent(state)

    twin.defvjp(forward, backward)
    return twin


# --------------------------------------------------------------------------- for case drawing


def draw_pair(rng, lo: int, hi: int) -> tuple[int, int]:
    return (int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1)))


def draw_padding(rng, max_pad: int = 2):
    """ "VALID", "SAME" or explicit ((top, bottom), (left, right)) padding, each a third."""
    choice = ("VALID", "SAME", "explicit")[rng.integers(3)]
    if choice == "explicit":
        return (draw_pair(rng, 0, max_pad), draw_pair(rng, 0, max_pad))
    return choice


def redraw(draw: Callable[[], tuple[Layer, tuple]]) -> tuple[Layer, tuple]:
    """draw() -> (layer, in_shape) again until the layer accepts the shape (no ValueError)."""
    while True:
        layer, in_shape = draw()
        try:
            layer.output_shape(in_shape)
        except ValueError:
            continue
        return layer, in_shape
