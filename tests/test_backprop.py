"""cnnjax.backprop: whole-network backprop with the hand-derived rules equals jax.grad, one layer,
one example, and the batched form (its kernel gradient summed inside one op)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import backprop, grads, models, ops

# float32 sums of up to a few hundred products of O(1) numbers: a few hundred ulps of slack.
F32_TOL = 1e-5
# float64 agreement between two orderings of the same sums.
F64_TOL = 1e-12

SPECS = [
    (models.REFERENCE_CNN, models.REFERENCE_INPUT_SHAPE),
    (
        (
            models.Conv(4, 3, stride=2, padding="SAME"),
            models.ReLU(),
            models.AvgPool(2, stride=1, padding=((1, 0), (0, 1)), count_include_pad=False),
            models.Conv(5, (2, 3), padding=((1, 2), (0, 1))),
            models.ReLU(),
            models.MaxPool(3, stride=2, padding="SAME"),
            models.Flatten(),
            models.Dense(6),
            models.ReLU(),
            models.Dense(3),
        ),
        (11, 9, 2),
    ),
]


@pytest.mark.parametrize(("spec", "shape"), SPECS)
def test_value_and_grad_equals_jax_value_and_grad(spec, shape):
    params = models.init(jax.random.key(0), spec, shape)
    num_classes = models.output_shapes(spec, shape)[-1][0]
    x = jax.random.normal(jax.random.key(1), (4, *shape))
    labels = jnp.arange(4) % num_classes
    want_loss, want = jax.value_and_grad(models.loss)(params, x, labels, spec)
    got_loss, got = jax.jit(backprop.value_and_grad, static_argnums=3)(params, x, labels, spec)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    np.testing.assert_allclose(got_loss, want_loss, rtol=F32_TOL)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        scale = float(jnp.max(jnp.abs(w))) + 1e-30
        assert float(jnp.max(jnp.abs(g - w))) / scale < F32_TOL


@pytest.mark.parametrize(
    ("stride", "padding", "kernel_hw"),
    [
        (1, "VALID", (3, 3)),
        (2, "SAME", (3, 3)),
        ((2, 1), ((1, 0), (2, 1)), (2, 4)),
        (3, "VALID", (2, 2)),
        (1, "VALID", (1, 1)),  # a 1x1 kernel: one matrix product
        (2, "SAME", (1, 1)),
        ((3, 2), ((1, 2), (0, 1)), (1, 1)),
    ],
)
def test_batch_kernel_grad_is_the_sum_of_the_per_example_ones(stride, padding, kernel_hw):
    with jax.enable_x64(True):  # the same sums in another order: float64 leaves ~1e-15
        x = jax.random.normal(jax.random.key(0), (5, 9, 8, 3), jnp.float64)
        w = jax.random.normal(jax.random.key(1), (*kernel_hw, 3, 4), jnp.float64)
        out = ops.conv2d_shape(x.shape[1:], w.shape, stride=stride, padding=padding)
        dy = jax.random.normal(jax.random.key(2), (5, *out), jnp.float64)
        per_example = jax.vmap(
            lambda a, d: grads.conv2d_vjp(a, w, d, stride=stride, padding=padding)[1]
        )(x, dy)
        got = grads.conv2d_kernel_grad_batch(x, dy, kernel_hw, stride=stride, padding=padding)
        np.testing.assert_allclose(got, per_example.sum(0), rtol=F64_TOL, atol=F64_TOL)


@pytest.mark.parametrize(("spec", "shape"), SPECS)
def test_batch_backprop_equals_the_plain_vmapped_one(spec, shape):
    with jax.enable_x64(True):
        params = models.init(jax.random.key(0), spec, shape)
        params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
        num_classes = models.output_shapes(spec, shape)[-1][0]
        x = jax.random.normal(jax.random.key(1), (6, *shape), jnp.float64)
        labels = jnp.arange(6) % num_classes
        kw = dict(static_argnums=3, static_argnames="label_smoothing")
        fast = jax.jit(backprop.backprop, **kw)(params, x, labels, spec, label_smoothing=0.1)
        plain = jax.jit(backprop.backprop_plain, **kw)(params, x, labels, spec, label_smoothing=0.1)
        for f, p in zip(jax.tree.leaves(fast), jax.tree.leaves(plain), strict=True):
            np.testing.assert_allclose(f, p, rtol=1e-10, atol=F64_TOL)


LAYERS = [
    (models.Conv(3, (2, 3), stride=2, padding="SAME"), (7, 6, 2)),
    (models.Dense(4), (5,)),
    (models.MaxPool(2, stride=1), (5, 4, 3)),
    (models.AvgPool(3, stride=2, padding=((1, 1), (0, 1)), count_include_pad=False), (6, 5, 2)),
    (models.ReLU(), (4, 4, 2)),
    (models.Flatten(), (3, 4, 2)),
]


@pytest.mark.parametrize(("layer", "shape"), LAYERS, ids=lambda v: type(v).__name__)
def test_layer_vjp_equals_jax_vjp_of_the_layer(layer, shape):
    with jax.enable_x64(True):
        params = models.init(jax.random.key(0), (layer,), shape, dtype=jnp.float64)
        (p,) = models.layer_params(params, (layer,))
        x = jax.random.normal(jax.random.key(1), shape, jnp.float64)
        y, vjp = jax.vjp(lambda p, x: models.layer_apply(layer, p, x), p, x)
        dy = jax.random.normal(jax.random.key(2), y.shape, jnp.float64)
        want_dp, want_dx = vjp(dy)
        dx, dp = backprop.layer_vjp(layer, p, x, dy)
    np.testing.assert_allclose(dx, want_dx, rtol=F64_TOL, atol=F64_TOL)
    if models.has_params(layer):
        for got, want in zip(jax.tree.leaves(dp), jax.tree.leaves(want_dp), strict=True):
            np.testing.assert_allclose(got, want, rtol=F64_TOL, atol=F64_TOL)
    else:
        assert dp == {}


def test_layer_vjp_names_an_unknown_layer():
    with pytest.raises(TypeError, match="unknown layer"):
        backprop.layer_vjp(object(), None, jnp.zeros(3), jnp.zeros(3))


@pytest.mark.parametrize(("spec", "shape"), SPECS)
def test_example_backprop_is_one_examples_loss_logits_and_gradient(spec, shape):
    with jax.enable_x64(True):
        params = models.init(jax.random.key(0), spec, shape, dtype=jnp.float64)
        x = jax.random.normal(jax.random.key(1), shape, jnp.float64)
        label = jnp.array(1)
        loss, logits, got = backprop.example_backprop(params, x, label, spec, label_smoothing=0.1)
        want_loss, want = jax.value_and_grad(models.loss)(
            params, x[None], label[None], spec, label_smoothing=0.1
        )
        want_logits = models.apply(params, x, spec)
    np.testing.assert_allclose(loss, want_loss, rtol=F64_TOL)
    np.testing.assert_allclose(logits, want_logits, rtol=F64_TOL, atol=F64_TOL)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=F64_TOL)


# --------------------------------------------------------------------------- the boundary
# models.loss's boundary (models.as_batch), on a small net of 3 classes.
SMALL = (models.Conv(2, 3), models.ReLU(), models.Flatten(), models.Dense(3))
ENTRY_POINTS = {
    "value_and_grad": backprop.value_and_grad,
    "backprop": backprop.backprop,
    "backprop_plain": backprop.backprop_plain,
}


@pytest.fixture(scope="module")
def small_case():
    params = models.init(jax.random.key(0), SMALL, (6, 6, 1))
    x = jax.random.normal(jax.random.key(1), (4, 6, 6, 1))
    return params, x, jnp.array([0, 2, 1, 2])


@pytest.mark.parametrize("entry", ENTRY_POINTS.values(), ids=ENTRY_POINTS.keys())
def test_backprop_refuses_out_of_range_labels_and_an_empty_batch(small_case, entry):
    params, x, _ = small_case
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\) for 3 classes, got 5 at"):
        entry(params, x, jnp.array([0, 1, 5, 2]), SMALL)
    with pytest.raises(ValueError, match=r"x_NHWC of shape \(0, 6, 6, 1\) holds no examples"):
        entry(params, x[:0], jnp.zeros(0, jnp.int32), SMALL)
    with pytest.raises(ValueError, match=r"the network takes float images, got dtype uint8"):
        entry(params, x.astype(jnp.uint8), jnp.array([0, 1, 1, 2]), SMALL)


@pytest.mark.parametrize("entry", ENTRY_POINTS.values(), ids=ENTRY_POINTS.keys())
def test_backprop_casts_bfloat16_images_up_to_the_params_exactly(small_case, entry):
    params, x, labels = small_case
    low = x.astype(jnp.bfloat16)
    up = low.astype(jnp.float32)  # exactly the bfloat16 values
    jitted = jax.jit(entry, static_argnums=3)  # dtypes are static: the cast happens under jit
    got, want = jitted(params, low, labels, SMALL), jitted(params, up, labels, SMALL)
    jax.tree.map(np.testing.assert_array_equal, got, want)
    # Traced labels go unchecked: an out-of-range label's example adds 0 and counts in N.
    loss = jitted(params, x, jnp.array([0, 2, 1, 7]), SMALL)[0]
    first_three = models.per_example_losses(params, x[:3], labels[:3], SMALL)
    np.testing.assert_allclose(loss, jnp.sum(first_three) / 4, rtol=F32_TOL)
