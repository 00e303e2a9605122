"""Softmax, log-softmax and the classification losses, numerically stable for any finite logits.

Legend: logits_K one example's class scores (any leading batch dims ...K work too); labels are
integer class ids (shape ...) or probability targets (shape ...K, one-hot or soft).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _shift(logits):
    """The per-row max, as a constant: softmax(z) = softmax(z - c) for any c, so subtracting
    the max changes nothing but keeps every exp() <= 1 (no overflow). A row whose max is
    +-inf is shifted by 0 instead, so -inf entries give exp(-inf) = 0, not NaN."""
    m = jnp.max(logits, axis=-1, keepdims=True)
    return jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))


def loss_dtype(dtype):
    """The dtype a loss is computed in for logits of `dtype`: at least float32 (a bfloat16
    softmax keeps 8 bits and loses small probabilities), float64 stays float64."""
    return dtype if jnp.finfo(dtype).bits >= 32 else jnp.dtype(jnp.float32)


def softmax(logits):
    """p_k = exp(z_k - max z) / sum_j exp(z_j - max z), over the last axis."""
    e = jnp.exp(logits - _shift(logits))
    return e / jnp.sum(e, axis=-1, keepdims=True)


def log_softmax(logits):
    """log p_k = (z_k - m) - log sum_j exp(z_j - m), m = max z (the log-sum-exp trick)."""
    shifted = logits - _shift(logits)
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))


def _is_integer(labels) -> bool:
    dtype = labels.dtype if hasattr(labels, "dtype") else np.asarray(labels).dtype
    return jnp.issubdtype(dtype, jnp.integer)


def _at(index) -> str:
    """' at index i' of a batch's label (i, or a tuple for more dims); '' for a lone label."""
    if len(index) == 0:
        return ""
    return f" at index {int(index[0]) if len(index) == 1 else tuple(int(i) for i in index)}"


def check_labels(labels, num_classes: int):
    """Integer labels must be class ids in [0, num_classes): a ValueError naming the first bad
    ones, their indices and the class count. Checked only where the values are concrete: traced
    labels (inside jit or vmap) are skipped, so a traced program never stops or waits for the
    device here; concrete ones are read to the host once. The one label check of every loss
    entry point (cross_entropy, cnnjax.models, cnnjax.backprop), which run it on a batch's
    labels before a vmap traces them."""
    if isinstance(labels, jax.core.Tracer) or not _is_integer(labels):
        return
    values = np.asarray(labels)
    bad = np.argwhere((values < 0) | (values >= num_classes))
    if not len(bad):
        return
    shown = [f"{values[tuple(i)]}{_at(i)}" for i in bad[:3]]
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    raise ValueError(
        f"labels must lie in [0, {num_classes}) for {num_classes} classes, "
        f"got {', '.join(shown)}{more}"
    )


def target_distribution(logits, labels, label_smoothing: float = 0.0):
    """The probability target q for the logits: one_hot(labels) for integer labels, else the
    given probabilities; with smoothing a, q = (1 - a) q + a / K. a may be a traced scalar (a
    population member's own value); it is range-checked when it is a Python number."""
    num_classes = logits.shape[-1]
    concrete = isinstance(label_smoothing, (int, float))
    if concrete and not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if _is_integer(labels):
        if jnp.shape(labels) != logits.shape[:-1]:
            raise ValueError(
                f"integer labels must have shape {logits.shape[:-1]} for logits of shape "
                f"{logits.shape}, got {jnp.shape(labels)}"
            )
        check_labels(labels, num_classes)
        target = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
    else:
        if jnp.shape(labels) != logits.shape:
            raise ValueError(
                f"probability targets must have the logits' shape {logits.shape}, "
                f"got {jnp.shape(labels)} (integer class ids need an integer dtype)"
            )
        target = jnp.asarray(labels, logits.dtype)
    if not (concrete and label_smoothing == 0):
        target = (1.0 - label_smoothing) * target + label_smoothing / num_classes
    return target


def cross_entropy(logits, labels, *, label_smoothing: float = 0.0):
    """Per-example cross-entropy from logits: L = -sum_k q_k log softmax(z)_k.

    Args:
      logits: shape (..., K), any float dtype.
      labels: integer class ids, shape (...), or probability targets, shape (..., K). Class ids
        outside [0, K) are a ValueError where concrete (`check_labels`); traced ones (under jit
        or vmap) are not checked: one_hot gives them an all-zero target (loss 0 unsmoothed).
      label_smoothing: a in [0, 1]; the target becomes (1 - a) q + a / K.
    Returns:
      Losses of shape (...): one per example, not averaged.
    """
    target = target_distribution(logits, labels, label_smoothing)
    log_p = log_softmax(logits)
    # 0 * log 0 counts as 0: a class with no target mass may have probability 0 (-inf logit).
    log_p = jnp.where(target > 0, log_p, 0.0)
    return -jnp.sum(target * log_p, axis=-1)


def binary_cross_entropy(logits, labels):
    """Per-element binary cross-entropy from logits z and targets y in [0, 1]:

        -[y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))] = max(z, 0) - z y + log(1 + exp(-|z|))

    The right-hand form never exponentiates a positive number, so it is exact for any finite z.
    """
    if jnp.shape(labels) != jnp.shape(logits):
        raise ValueError(
            f"labels must have the logits' shape {jnp.shape(logits)}, got {jnp.shape(labels)}"
        )
    labels = jnp.asarray(labels, jnp.result_type(logits))
    # max(z, 0) and |z| both take their z >= 0 branch at z = 0, so their kinks cancel and the
    # gradient there is sigmoid(0) - y (jnp.maximum splits a tie 1/2-1/2 and would give -y).
    nonneg = logits >= 0
    relu_z, abs_z = jnp.where(nonneg, logits, 0.0), jnp.where(nonneg, logits, -logits)
    return relu_z - logits * labels + jnp.log1p(jnp.exp(-abs_z))


def accuracy(logits, labels):
    """Fraction of examples whose arg-max class is the label (integer ids or one-hot/soft)."""
    if not _is_integer(labels):
        labels = jnp.argmax(labels, axis=-1)
    if jnp.shape(labels) != logits.shape[:-1]:
        raise ValueError(
            f"labels must have shape {logits.shape[:-1]} for logits of shape {logits.shape}, "
            f"got {jnp.shape(labels)}"
        )
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)
