"""cnnjax.losses: the seed's worked numbers (checked), stability, invariants, every error."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cnnjax import losses

EPS = {np.float32: float(np.finfo(np.float32).eps), np.float64: float(np.finfo(np.float64).eps)}
# softmax/log-softmax of logits of size |z| round each z - max(z) to ~eps*|z| and then exp/log/
# sum a handful of terms: a few eps per unit of the logits' magnitude (plus one) is the bound.
ULPS_PER_UNIT = 16
# The seed prints probabilities to 3 decimals and sums/exps to 2: half a unit in the last place.
HALF_3DP, HALF_2DP = 0.0005, 0.005

# The seed's digit-"7" logits (Parts 2-4).
SEED_LOGITS = [1.2, 0.8, 2.1, 1.5, 0.3, 1.0, 2.5, 5.2, 1.8, 0.9]
SEED_PROBS = [0.015, 0.010, 0.036, 0.020, 0.006, 0.012, 0.054, 0.808, 0.027, 0.011]


def tol(dtype, magnitude=0.0):
    return ULPS_PER_UNIT * EPS[dtype] * (1.0 + magnitude)


def close(actual, expected, atol):
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=0, atol=atol)


def logits_from_probs(p, dtype):
    """Logits whose softmax is p (log p works: softmax(log p) = p / sum p = p)."""
    return jnp.asarray(np.log(np.asarray(p, np.float64)), dtype)


# --------------------------------------------------------------------------- the seed's numbers


def test_seed_softmax_example(float_dtype):
    z = jnp.asarray(SEED_LOGITS, float_dtype)
    p = losses.softmax(z)
    assert p.dtype == float_dtype
    close(p, SEED_PROBS, HALF_3DP)
    # sum_j exp(z_j) = 224.23: the log-sum-exp is z_k - log_softmax(z)_k for any k.
    close(math.exp(float(z[7] - losses.log_softmax(z)[7])), 224.23, HALF_2DP)
    assert int(jnp.argmax(p)) == 7
    close(jnp.sum(p), 1.0, tol(float_dtype))
    # The seed's "Total: 0.015 + 0.010 + ... + 0.011 = 1.000" is off: its rounded values sum to
    # 0.999 (the true probabilities sum to 1, which is what is checked above).
    assert round(sum(SEED_PROBS), 3) == 0.999


def test_seed_cross_entropy_example(float_dtype):
    z = jnp.asarray(SEED_LOGITS, float_dtype)
    loss = losses.cross_entropy(z, jnp.asarray(7))
    close(loss, 0.213, HALF_3DP)  # -log(0.808); exactly -log(0.80843...) = 0.21265
    close(loss, -math.log(float(losses.softmax(z)[7])), tol(float_dtype, 1.0))
    # dL/dz = p - onehot(7) = [0.015, ..., -0.192, ..., 0.011] (Part 4, step 1a).
    grad = jax.grad(losses.cross_entropy)(z, jnp.asarray(7))
    close(grad, np.array(SEED_PROBS) - np.eye(10)[7], HALF_3DP)


def test_seed_stable_softmax_example(float_dtype):
    # The seed gets sum = 1.51 and P(class 3) = 1.00 / 1.51 = 0.66 from rounded exps. Exactly:
    # 1 + e^-1 + e^-2 = 1.503 and P(class 3) = 0.6652 (0.67 to two decimals, not 0.66).
    z = jnp.asarray([1000.0, 1001.0, 1002.0], float_dtype)
    p = losses.softmax(z)
    assert bool(jnp.all(jnp.isfinite(p)))
    close(p, [0.0900306, 0.2447285, 0.6652410], 1e-6)
    close(math.exp(float(z[2] - losses.log_softmax(z)[2]) - 1002.0), 1.503, HALF_3DP)


@pytest.mark.parametrize(
    ("p_true", "loss"),
    [
        (0.99, 0.010),
        (0.90, 0.105),
        (0.80, 0.223),
        (0.50, 0.693),
        (0.20, 1.609),
        (0.10, 2.303),
        (0.01, 4.605),
    ],
)
def test_seed_loss_table(float_dtype, p_true, loss):
    z = logits_from_probs([p_true, 1 - p_true], float_dtype)
    close(losses.cross_entropy(z, jnp.asarray(0)), loss, HALF_3DP)


def test_seed_batch_of_three(float_dtype):
    p_true = [0.808, 0.652, 0.921]
    z = jnp.stack([logits_from_probs([p, 1 - p], float_dtype) for p in p_true])
    per_example = losses.cross_entropy(z, jnp.zeros(3, jnp.int32))
    assert per_example.shape == (3,)
    close(per_example, [0.213, 0.428, 0.082], HALF_3DP)
    close(jnp.mean(per_example), 0.241, HALF_3DP)


def test_seed_digit_3_training_step(float_dtype):
    # Part 4, section 6 prints p = [0.045, 0.022, 0.033, 0.607, ...], L = -log(0.607) = 0.499 and
    # dL/dz_3 = -0.393. Its logits give p_3 = 0.635, L = 0.453, dL/dz_3 = -0.3645 instead.
    z = jnp.asarray([1.5, 0.8, 1.2, 4.1, 0.9, 1.1, 1.8, 2.0, 1.3, 0.7], float_dtype)
    close(
        losses.softmax(z),
        [0.047, 0.023, 0.035, 0.635, 0.026, 0.032, 0.064, 0.078, 0.039, 0.021],
        HALF_3DP,
    )
    close(losses.cross_entropy(z, jnp.asarray(3)), 0.453, HALF_3DP)
    close(jax.grad(losses.cross_entropy)(z, jnp.asarray(3))[3], -0.3645, HALF_3DP / 10)


# --------------------------------------------------------------------------- softmax invariants

logit = st.floats(-30, 30, width=32)  # |z| <= 30: every softmax entry stays a normal float32
# fixed shapes (K = 5 classes, 3 rows): hypothesis varies the values, not the XLA programs
logit_rows = st.lists(st.lists(logit, min_size=5, max_size=5), min_size=3, max_size=3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@given(rows=logit_rows, shift=st.integers(-100, 100))
def test_softmax_rows_sum_to_one_and_ignore_a_constant(dtype, rows, shift):
    with jax.enable_x64(dtype == np.float64):
        z = jnp.asarray(rows, dtype)
        p = losses.softmax(z)
        assert p.shape == z.shape and p.dtype == dtype
        close(jnp.sum(p, axis=-1), np.ones(len(rows)), tol(dtype))
        assert bool(jnp.all(p >= 0))
        labels = jnp.zeros(len(rows), jnp.int32)
        # adding c to every logit rounds each z + c: error ~ eps * (|z| + |c|)
        atol = tol(dtype, 30 + abs(shift))
        close(losses.softmax(z + shift), np.asarray(p, np.float64), atol)
        close(
            losses.cross_entropy(z + shift, labels),
            np.asarray(losses.cross_entropy(z, labels), np.float64),
            atol,
        )


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@given(rows=logit_rows)
def test_log_softmax_is_log_of_softmax(dtype, rows):
    with jax.enable_x64(dtype == np.float64):
        z = jnp.asarray(rows, dtype)
        log_p = np.asarray(losses.log_softmax(z), np.float64)
        p = np.asarray(losses.softmax(z), np.float64)
    assert (p > 0).all()  # so log(softmax) is finite everywhere here
    close(log_p, np.log(p), tol(dtype, float(np.max(np.abs(log_p)))))


def test_no_overflow_at_huge_logits(float_dtype):
    z = jnp.asarray([1e4, -1e4, 0.0], float_dtype)
    np.testing.assert_array_equal(np.asarray(losses.softmax(z)), [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(np.asarray(losses.log_softmax(z)), [0.0, -2e4, -1e4])
    ce = losses.cross_entropy(jnp.stack([z, z, z]), jnp.arange(3))
    np.testing.assert_array_equal(np.asarray(ce), [0.0, 2e4, 1e4])
    close(losses.softmax(jnp.asarray([1e4, 1e4], float_dtype)), [0.5, 0.5], tol(float_dtype))
    grad = jax.grad(losses.cross_entropy)(z, jnp.asarray(1))
    np.testing.assert_array_equal(np.asarray(grad), [1.0, -1.0, 0.0])


def test_minus_inf_logit_has_probability_exactly_zero(float_dtype):
    z = jnp.asarray([0.0, -jnp.inf, 0.0], float_dtype)
    np.testing.assert_array_equal(np.asarray(losses.softmax(z)), [0.5, 0.0, 0.5])
    assert float(losses.log_softmax(z)[1]) == -np.inf
    for target in (jnp.asarray(0), jnp.asarray([1.0, 0.0, 0.0], float_dtype)):
        close(losses.cross_entropy(z, target), math.log(2), tol(float_dtype))
        grad = jax.grad(losses.cross_entropy)(z, target)
        assert not bool(jnp.any(jnp.isnan(grad)))
        close(grad, [-0.5, 0.0, 0.5], tol(float_dtype))
    soft = jnp.asarray([0.25, 0.0, 0.75], float_dtype)  # no mass on the impossible class
    close(losses.cross_entropy(z, soft), math.log(2), tol(float_dtype))
    assert not bool(jnp.any(jnp.isnan(jax.grad(losses.cross_entropy)(z, soft))))
    # The impossible class as the label costs infinitely much (and says so, no NaN).
    assert float(losses.cross_entropy(z, jnp.asarray(1))) == np.inf


# --------------------------------------------------------------------------- cross-entropy


def test_int_labels_equal_one_hot_equal_minus_log_softmax(float_dtype):
    z = jnp.asarray(np.random.default_rng(0).normal(size=(5, 4)) * 3, float_dtype)
    labels = jnp.asarray([0, 3, 1, 1, 2])
    ce_int = losses.cross_entropy(z, labels)
    ce_onehot = losses.cross_entropy(z, jax.nn.one_hot(labels, 4, dtype=float_dtype))
    by_hand = -np.log(np.asarray(losses.softmax(z), np.float64))[np.arange(5), labels]
    assert ce_int.shape == (5,) and ce_int.dtype == float_dtype
    close(ce_int, by_hand, tol(float_dtype, 10))
    close(ce_onehot, np.asarray(ce_int, np.float64), tol(float_dtype, 10))


def test_soft_targets_by_hand(float_dtype):
    # softmax(log [1, 2, 3]) = [1, 2, 3] / 6; q = [1/2, 0, 1/2]:
    # L = -(1/2 log(1/6) + 1/2 log(3/6)) = 1/2 log 12.
    z = jnp.log(jnp.asarray([1.0, 2.0, 3.0], float_dtype))
    q = jnp.asarray([0.5, 0.0, 0.5], float_dtype)
    close(losses.cross_entropy(z, q), 0.5 * math.log(12), tol(float_dtype, 2))
    grad = jax.grad(losses.cross_entropy)(z, q)
    close(grad, np.array([1, 2, 3]) / 6 - np.array([0.5, 0, 0.5]), tol(float_dtype))


def test_label_smoothing_matches_formula(float_dtype):
    # K = 4, a = 0.2, label 1: q = (1 - a) onehot + a / K = [0.05, 0.85, 0.05, 0.05].
    z = jnp.asarray([0.3, 2.0, -1.0, 0.5], float_dtype)
    q = np.array([0.05, 0.85, 0.05, 0.05])
    log_p = np.asarray(losses.log_softmax(z), np.float64)
    smoothed = losses.cross_entropy(z, jnp.asarray(1), label_smoothing=0.2)
    close(smoothed, -np.sum(q * log_p), tol(float_dtype, 3))
    close(losses.target_distribution(z, jnp.asarray(1), 0.2), q, tol(float_dtype))
    close(
        jax.grad(losses.cross_entropy)(z, jnp.asarray(1), label_smoothing=0.2),
        np.exp(log_p) - q,
        tol(float_dtype),
    )
    # a = 1 is the uniform target; a = 0 is no smoothing; soft targets are smoothed too.
    uniform = losses.cross_entropy(z, jnp.asarray(1), label_smoothing=1.0)
    close(uniform, -np.mean(log_p), tol(float_dtype, 3))
    close(losses.cross_entropy(z, jnp.asarray(1), label_smoothing=0.0), -log_p[1], tol(float_dtype))
    soft = np.array([0.5, 0.0, 0.5, 0.0])
    close(
        losses.cross_entropy(z, jnp.asarray(soft, float_dtype), label_smoothing=0.2),
        -np.sum((0.8 * soft + 0.05) * log_p),
        tol(float_dtype, 3),
    )


def test_per_example_losses_over_leading_batch_dims(float_dtype):
    rng = np.random.default_rng(1)
    z = jnp.asarray(rng.normal(size=(2, 3, 5)), float_dtype)
    labels = jnp.asarray(rng.integers(0, 5, size=(2, 3)))
    ce = losses.cross_entropy(z, labels, label_smoothing=0.1)
    assert ce.shape == (2, 3)
    soft = jax.nn.one_hot(labels, 5, dtype=float_dtype)
    assert losses.cross_entropy(z, soft).shape == (2, 3)
    for i in range(2):
        for j in range(3):
            one = losses.cross_entropy(z[i, j], labels[i, j], label_smoothing=0.1)
            close(ce[i, j], float(one), tol(float_dtype, 5))


def test_cross_entropy_jit_equals_no_jit():
    z = jnp.asarray(np.random.default_rng(2).normal(size=(4, 6)), jnp.float32)
    labels = jnp.asarray([5, 0, 2, 2])
    jitted = jax.jit(losses.cross_entropy, static_argnames="label_smoothing")
    close(
        jitted(z, labels, label_smoothing=0.1),
        np.asarray(losses.cross_entropy(z, labels, label_smoothing=0.1), np.float64),
        tol(np.float32, 5),
    )


# --------------------------------------------------------------------------- binary cross-entropy


BCE_LOGIT_RANGE = 10.0
# The naive formula is the inaccurate side: log(1 - sigmoid(z)) cancels, losing ~eps * e^|z|
# even in float64, so the comparison allows that on top of the library's own rounding.
NAIVE_BCE_ATOL = 4 * EPS[np.float64] * math.exp(BCE_LOGIT_RANGE)


def naive_bce(z, y):
    s = 1 / (1 + np.exp(-z))
    return -(y * np.log(s) + (1 - y) * np.log(1 - s))


def test_bce_matches_naive_formula_for_moderate_logits(float_dtype):
    rng = np.random.default_rng(3)
    z = rng.uniform(-BCE_LOGIT_RANGE, BCE_LOGIT_RANGE, size=50).astype(float_dtype)
    y = rng.uniform(0, 1, size=50).astype(float_dtype)
    z[:3], y[:3] = 0.0, [0.0, 0.5, 1.0]
    bce = losses.binary_cross_entropy(jnp.asarray(z), jnp.asarray(y))
    assert bce.shape == (50,) and bce.dtype == float_dtype
    expected = naive_bce(z.astype(np.float64), y.astype(np.float64))
    close(bce, expected, tol(float_dtype, BCE_LOGIT_RANGE) + NAIVE_BCE_ATOL)


def test_bce_is_finite_with_correct_limits_at_huge_logits(float_dtype):
    z = jnp.asarray([1e4, 1e4, 1e4, -1e4, -1e4, -1e4], float_dtype)
    y = jnp.asarray([1.0, 0.0, 0.5, 0.0, 1.0, 0.5], float_dtype)
    # sigma(1e4) = 1 to every precision: the loss is z (1 - y) for z > 0 and -z y for z < 0.
    np.testing.assert_array_equal(
        np.asarray(losses.binary_cross_entropy(z, y)), [0.0, 1e4, 5e3, 0.0, 1e4, 5e3]
    )


def test_bce_gradient_is_sigmoid_minus_label(float_dtype):
    # z = 0 is included on purpose: the |z| and max(z, 0) kinks must cancel there.
    z = jnp.asarray([0.0, 0.0, 0.0, 1.5, -2.0, 7.0, -7.0, 1e4, -1e4], float_dtype)
    y = jnp.asarray([0.0, 1.0, 0.3, 0.2, 1.0, 0.0, 0.9, 0.0, 1.0], float_dtype)
    grad = jax.grad(lambda z: jnp.sum(losses.binary_cross_entropy(z, y)))(z)
    close(grad, np.asarray(jax.nn.sigmoid(z) - y, np.float64), tol(float_dtype))


def test_bce_label_shape_mismatch():
    with pytest.raises(ValueError, match=r"labels must have the logits' shape \(3,\), got \(2,\)"):
        losses.binary_cross_entropy(jnp.zeros(3), jnp.zeros(2))


# --------------------------------------------------------------------------- accuracy


def test_accuracy_with_int_and_one_hot_labels(float_dtype):
    z = jnp.asarray(
        [[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 1.0, 5.0], [4.0, 0.0, 1.0]], float_dtype
    )
    labels = jnp.asarray([0, 1, 2, 2])  # the last one is wrong
    assert float(losses.accuracy(z, labels)) == 0.75
    assert float(losses.accuracy(z, jax.nn.one_hot(labels, 3, dtype=float_dtype))) == 0.75
    assert float(losses.accuracy(z, jnp.asarray([1, 0, 0, 1]))) == 0.0
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\) for logits of shape"):
        losses.accuracy(z, labels[:3])


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "bad, named",
    [([0, 3], "got 3 at index 1"), ([-1, 1], "got -1 at index 0"), (5, "got 5$")],
)
def test_out_of_range_integer_label_names_the_value_and_its_index(bad, named):
    z = jnp.zeros((2, 3)) if np.ndim(bad) else jnp.zeros(3)
    with pytest.raises(ValueError, match=rf"labels must lie in \[0, 3\) for 3 classes, {named}"):
        losses.cross_entropy(z, jnp.asarray(bad))


def test_label_check_lists_the_first_three_bad_labels_and_counts_the_rest():
    labels = np.array([[0, 7, 1], [9, -2, 8]])  # 4 bad of 6, in row-major order
    with pytest.raises(ValueError) as raised:
        losses.check_labels(labels, 3)
    assert str(raised.value) == (
        "labels must lie in [0, 3) for 3 classes, "
        "got 7 at index (0, 1), 9 at index (1, 0), -2 at index (1, 1) and 1 more"
    )
    losses.check_labels(np.array([0, 2]), 3)  # in range: no error
    losses.check_labels(np.array([[0.2, 0.8]]), 1)  # probability targets: not class ids


def test_label_check_is_skipped_for_traced_labels():
    """Under jit the labels are tracers: no check (it would need their values), no error."""
    z = jnp.zeros((2, 3))
    got = jax.jit(losses.cross_entropy)(z, jnp.asarray([0, 3]))
    # one_hot of 3 with 3 classes is all zeros, so that example's target is empty: loss 0.
    np.testing.assert_array_equal(got, [losses.cross_entropy(z[0], jnp.asarray(0)), 0.0])


def test_label_shape_mismatch():
    z = jnp.zeros((2, 3))
    with pytest.raises(
        ValueError, match=r"integer labels must have shape \(2,\) for logits of sha"
    ):
        losses.cross_entropy(z, jnp.asarray([0, 1, 2]))
    with pytest.raises(ValueError, match=r"probability targets must have the logits' shape \(2, 3"):
        losses.cross_entropy(z, jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"integer class ids need an integer dtype"):
        losses.cross_entropy(z, jnp.asarray([0.0, 1.0]))


@pytest.mark.parametrize("a", [-0.1, 1.5, float("nan")])
def test_label_smoothing_outside_unit_interval(a):
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\], got"):
        losses.cross_entropy(jnp.zeros(3), jnp.asarray(0), label_smoothing=a)
