"""Backprop through a whole network spec with the hand-derived rules of `cnnjax.grads`: run the
layers forward keeping each layer's input, start from dL/dlogits = softmax - target, and apply
each layer's rule from the last layer to the first.

`example_backprop` is one example (the plain formulation, vmapped by `backprop_plain`);
`backprop` is the batched form that sums each parameter gradient inside one op. Legend as in
`cnnjax.grads`; N examples, K classes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from cnnjax import losses, models, ops
from cnnjax.grads import (
    avg_pool_vjp,
    conv2d_vjp,
    cross_entropy_vjp,
    dense_vjp,
    flatten_vjp,
    max_pool_vjp,
    relu_vjp,
)


def layer_vjp(layer: models.Layer, p, x, dy):
    """One layer's rule: (dx, dparams) with dparams None for layers without params."""
    match layer:
        case models.Conv():
            dx, dw, db = conv2d_vjp(x, p["kernel"], dy, stride=layer.stride, padding=layer.padding)
            return dx, {"kernel": dw, "bias": db}
        case models.Dense():
            dx, dw, db = dense_vjp(x, p["kernel"], dy)
            return dx, {"kernel": dw, "bias": db}
        case models.MaxPool():
            pool = dict(window=layer.window, stride=layer.stride, padding=layer.padding)
            return max_pool_vjp(x, dy, **pool), None
        case models.AvgPool():
            pool = dict(window=layer.window, stride=layer.stride, padding=layer.padding)
            return avg_pool_vjp(x, dy, **pool, count_include_pad=layer.count_include_pad), None
        case models.ReLU():
            return relu_vjp(x, dy), None
        case models.Flatten():
            return flatten_vjp(x, dy), None
    raise TypeError(f"unknown layer {layer!r}")


def _reverse_pass(spec, layer_ps, inputs, dy, vjp) -> dict:
    """From the last layer to the first, dy, dparams = vjp(layer, params, its input, dy); returns
    the parameter gradients by layer name."""
    grads = {}
    steps = zip(spec, layer_ps, models.layer_names(spec), inputs, strict=True)
    for layer, p, name, x_in in reversed(list(steps)):
        dy, dparams = vjp(layer, p, x_in, dy)
        if name is not None:
            grads[name] = dparams
    return grads


def example_backprop(params, x_HWC, label, spec: models.Spec, *, label_smoothing=0.0):
    """One example's loss, logits and gradient by backprop: run the layers forward keeping each
    layer's input, start from dL/dlogits = softmax - target, and apply the rules in reverse.
    x_HWC is taken as `models.apply` takes it (`models.as_input`)."""
    layer_ps = models.layer_params(params, spec)
    inputs, h = [], models.as_input(params, x_HWC)
    for layer, p in zip(spec, layer_ps, strict=True):
        inputs.append(h)
        h = models.layer_apply(layer, p, h)
    loss = losses.cross_entropy(h, label, label_smoothing=label_smoothing)
    dy = cross_entropy_vjp(h, label, label_smoothing=label_smoothing)
    return loss, h, _reverse_pass(spec, layer_ps, inputs, dy, layer_vjp)


def backprop_plain(params, x_NHWC, labels_N, spec: models.Spec, *, label_smoothing=0.0):
    """(batch-mean loss, logits_NK, batch-mean gradient): example_backprop vmapped over the
    examples and averaged. The plain formulation; `backprop` computes the same faster. Inputs
    are checked as in `backprop`."""
    x_NHWC = models.as_batch(params, x_NHWC, labels_N, spec, averaged=True)
    per_example = jax.vmap(
        lambda x, y: example_backprop(params, x, y, spec, label_smoothing=label_smoothing)
    )
    losses_N, logits_NK, grads_N = per_example(x_NHWC, labels_N)
    n = x_NHWC.shape[0]
    return jnp.mean(losses_N), logits_NK, jax.tree.map(lambda g: jnp.sum(g, axis=0) / n, grads_N)


def conv2d_kernel_grad_batch(x_NHWC, dy_NHWO, kernel_hw, *, stride=1, padding="VALID"):
    """dL/dw of a batch: sum over n of conv2d_vjp's dw, i.e.

        dL/dw[m, q, c, o] = sum_{n, i, j} xpad[n, i*s + m, j*s + q, c] dy[n, i, j, o]

    computed as ONE convolution in which the examples are the contracted "input features"
    (x read as C x H x W x N, the error as N x H' x W' x O, dilated by the stride). Vmapping
    conv2d_vjp instead gives a convolution per example (a grouped convolution, several times
    slower on XLA:CPU) and then sums them."""
    (kh, kw), stride_hw = kernel_hw, ops.as_pair(stride, "stride")
    pads = ops.explicit_padding(x_NHWC.shape[1:3], (kh, kw), stride_hw, padding)
    ho, wo = dy_NHWO.shape[1:3]
    used_h, used_w = (ho - 1) * stride_hw[0] + kh, (wo - 1) * stride_hw[1] + kw
    xpad = jnp.pad(x_NHWC, ((0, 0), *pads, (0, 0)))[:, :used_h, :used_w]
    return lax.conv_general_dilated(
        xpad,
        dy_NHWO,
        window_strides=(1, 1),
        padding="VALID",
        rhs_dilation=stride_hw,
        dimension_numbers=("CHWN", "IHWO", "HWNC"),
    )


def _layer_vjp_batch(layer: models.Layer, p, x_N, dy_N):
    """layer_vjp for a batch: dx per example (vmapped rules) and dparams summed over examples."""
    if isinstance(layer, models.Conv):
        conv = dict(stride=layer.stride, padding=layer.padding)
        dx = jax.vmap(lambda x, dy: conv2d_vjp(x, p["kernel"], dy, **conv)[0])(x_N, dy_N)
        dw = conv2d_kernel_grad_batch(x_N, dy_N, p["kernel"].shape[:2], **conv)
        return dx, {"kernel": dw, "bias": jnp.sum(dy_N, axis=(0, 1, 2))}
    if isinstance(layer, models.Dense):  # dw = sum_n outer(x_n, dy_n) = x^T dy
        return dy_N @ p["kernel"].T, {"kernel": x_N.T @ dy_N, "bias": jnp.sum(dy_N, axis=0)}
    return jax.vmap(lambda x, dy: layer_vjp(layer, p, x, dy)[0])(x_N, dy_N), None


def backprop(params, x_NHWC, labels_N, spec: models.Spec, *, label_smoothing=0.0):
    """(batch-mean loss, logits_NK, batch-mean gradient) by manual backprop over the batch: the
    forward pass and every dx are the one-example functions vmapped; each parameter gradient is
    summed over the examples inside one op (conv2d_kernel_grad_batch, x^T dy for dense).
    Equal to backprop_plain within float rounding (tests/test_grads.py).

    The boundary is `models.loss`'s (`models.as_batch`): float16/bfloat16 images are cast up to
    the params' dtype, integer images refused; an empty batch and, where concrete, an
    out-of-range label are ValueErrors."""
    x_NHWC = models.as_batch(params, x_NHWC, labels_N, spec, averaged=True)
    layer_ps = models.layer_params(params, spec)
    inputs, h = [], x_NHWC
    for layer, p in zip(spec, layer_ps, strict=True):
        inputs.append(h)
        h = jax.vmap(lambda x, layer=layer, p=p: models.layer_apply(layer, p, x))(h)
    # The loss in at least float32: logits computed in bfloat16 (mixed precision) are upcast
    # for the softmax, and the error goes back down in the layers' dtype.
    z = h.astype(losses.loss_dtype(h.dtype))
    ce = functools.partial(losses.cross_entropy, label_smoothing=label_smoothing)
    losses_N = jax.vmap(ce)(z, labels_N)
    n = x_NHWC.shape[0]
    ce_vjp = functools.partial(cross_entropy_vjp, label_smoothing=label_smoothing)
    dy = (jax.vmap(ce_vjp)(z, labels_N) / n).astype(h.dtype)  # the batch mean's 1/N, once
    return jnp.mean(losses_N), z, _reverse_pass(spec, layer_ps, inputs, dy, _layer_vjp_batch)


def value_and_grad(params, x_NHWC, labels_N, spec: models.Spec, *, label_smoothing=0.0):
    """The batch-mean loss and its gradient by manual backprop: the same (loss, grads) pytree as
    jax.value_and_grad(models.loss)(params, x_NHWC, labels_N, spec), for any spec."""
    loss, _, grads = backprop(params, x_NHWC, labels_N, spec, label_smoothing=label_smoothing)
    return loss, grads
