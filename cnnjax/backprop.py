"""Backprop through a whole network spec with the hand-derived rules: run the layers forward
keeping each layer's input, start from dL/dlogits = softmax - target, and apply each layer's
`vjp` (cnnjax.layers, the rules of cnnjax.grads) from the last layer to the first.

`example_backprop` is one example (the plain formulation, vmapped by `backprop_plain`);
`backprop` is the batched form, in which each layer's `vjp_batch` sums its parameter gradient
over the examples inside one op where it can. Legend as in `cnnjax.grads`; N examples, K classes.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from cnnjax import layers, losses, models
from cnnjax.grads import cross_entropy_vjp
from cnnjax.layers import Context, chain


class Backprop(NamedTuple):
    loss: jax.Array  # the batch mean
    logits: jax.Array  # logits_NK (at least float32)
    grads: dict  # the batch mean's gradient, the params' pytree
    state: dict  # the state after the step (train mode), else as given


def layer_vjp(layer: models.Layer, p, x, dy, ctx: Context = layers.EVAL):
    """One layer's rule on one example: (dx, dparams), dparams {} for layers without params."""
    if not isinstance(layer, models.Layer):
        raise TypeError(f"unknown layer {layer!r}")
    return layer.vjp(p, x, dy, ctx)


def example_backprop(params, x_HWC, label, spec: models.Spec, *, label_smoothing=0.0, state=None):
    """One example's loss, logits and gradient by backprop, in eval mode: run the layers forward
    keeping each layer's input, start from dL/dlogits = softmax - target, and apply the rules in
    reverse. x_HWC is taken as `models.apply` takes it (`models.as_input`)."""
    ctx = Context(False, None, state)
    h = models.as_input(params, x_HWC)
    logits, _ = chain.apply(params, h, spec, ctx)
    loss = losses.cross_entropy(logits, label, label_smoothing=label_smoothing)
    dy = cross_entropy_vjp(logits, label, label_smoothing=label_smoothing)
    _, grads = chain.vjp(params, h, dy, spec, ctx)
    return loss, logits, grads


def backprop_plain(params, x_NHWC, labels_N, spec: models.Spec, *, label_smoothing=0.0, state=None):
    """(batch-mean loss, logits_NK, batch-mean gradient): example_backprop vmapped over the
    examples and averaged, in eval mode. The plain formulation; `backprop` computes the same
    faster. Inputs are checked as in `backprop`."""
    x_NHWC = models.as_batch(params, x_NHWC, labels_N, spec, averaged=True)
    kw = dict(label_smoothing=label_smoothing, state=state)
    per_example = jax.vmap(lambda x, y: example_backprop(params, x, y, spec, **kw))
    losses_N, logits_NK, grads_N = per_example(x_NHWC, labels_N)
    n = x_NHWC.shape[0]
    return jnp.mean(losses_N), logits_NK, jax.tree.map(lambda g: jnp.sum(g, axis=0) / n, grads_N)


def backprop(
    params,
    x_NHWC,
    labels_N,
    spec: models.Spec,
    *,
    label_smoothing=0.0,
    state=None,
    train=False,
    key=None,
) -> Backprop:
    """(batch-mean loss, logits_NK, batch-mean gradient, state) by manual backprop over the
    batch: the forward pass and every dx are the one-example functions vmapped (`chain.
    forward_batch`); each parameter gradient is summed over the examples inside one op where the
    layer kind has one (a conv's kernel gradient as one convolution, dense's x^T dy). Equal to
    backprop_plain within float rounding (tests/test_backprop.py). `state`, `train` and `key` as
    `models.batch_apply`: in train mode batch statistics, dropout and the rules through them.

    The boundary is `models.loss`'s (`models.as_batch`): float16/bfloat16 images are cast up to
    the params' dtype, integer images refused; an empty batch and, where concrete, an
    out-of-range label are ValueErrors."""
    x_NHWC = models.as_batch(params, x_NHWC, labels_N, spec, averaged=True)
    ctx = Context(bool(train), key, state)
    h, new_state, inputs = chain.forward_batch(params, x_NHWC, spec, ctx)
    # The loss in at least float32: logits computed in bfloat16 (mixed precision) are upcast
    # for the softmax, and the error goes back down in the layers' dtype.
    z = h.astype(losses.loss_dtype(h.dtype))
    ce = functools.partial(losses.cross_entropy, label_smoothing=label_smoothing)
    losses_N = jax.vmap(ce)(z, labels_N)
    n = x_NHWC.shape[0]
    ce_vjp = functools.partial(cross_entropy_vjp, label_smoothing=label_smoothing)
    dy = (jax.vmap(ce_vjp)(z, labels_N) / n).astype(h.dtype)  # the batch mean's 1/N, once
    _, grads = chain.vjp_batch(params, inputs, dy, spec, ctx)
    return Backprop(jnp.mean(losses_N), z, grads, new_state)


def value_and_grad(params, x_NHWC, labels_N, spec: models.Spec, *, label_smoothing=0.0, **mode):
    """The batch-mean loss and its gradient by manual backprop: the same (loss, grads) pytree as
    jax.value_and_grad(models.loss)(params, x_NHWC, labels_N, spec, **mode), for any spec."""
    out = backprop(params, x_NHWC, labels_N, spec, label_smoothing=label_smoothing, **mode)
    return out.loss, out.grads
