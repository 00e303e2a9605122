"""cnnjax.models: specs as data, init/apply shape agreement, names, vmapped batches and grads."""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import losses, models
from cnnjax.models import AvgPool, Conv, Dense, Flatten, MaxPool, ReLU

# float32 logits/losses/grads of these small nets, batched (vmap) vs one at a time: the same
# ops in a different order of evaluation, so a few float32 ulps of O(1) values.
F32_RTOL = 1e-5
F32_ATOL = 1e-6

SMALL = (Conv(4, 3), ReLU(), MaxPool(2), Flatten(), Dense(5), ReLU(), Dense(3))
SMALL_INPUT = (8, 8, 2)

OTHER_SPECS = {
    "strided_same": (
        (Conv(4, 3, stride=2, padding="SAME"), ReLU(), Flatten(), Dense(3)),
        (9, 7, 1),
    ),
    "avg_pool_padded": (
        (
            Conv(3, (3, 2)),
            ReLU(),
            AvgPool(3, 2, ((1, 1), (0, 2)), count_include_pad=False),
            Flatten(),
            Dense(4),
        ),
        (10, 9, 3),
    ),
    "deeper": (
        (
            Conv(4, 3, padding="SAME"),
            ReLU(),
            Conv(4, 3, padding="SAME"),
            ReLU(),
            MaxPool(2),
            Conv(6, 3, stride=(1, 2), padding=[[1, 0], [0, 1]]),
            ReLU(),
            MaxPool(2, 1, "SAME"),
            AvgPool(2),
            Flatten(),
            Dense(8),
            ReLU(),
            Dense(8),
            ReLU(),
            Dense(2),
        ),
        (12, 12, 1),
    ),
    "pool_first_no_hidden_dense": (
        (MaxPool(3, 2, "SAME"), Conv(2, 1), Flatten(), Dense(3)),
        (7, 7, 2),
    ),
}


# Jitted once per spec (a spec is hashable: a static argument), so each test compiles a few
# programs instead of dispatching and compiling every op eagerly.
init = jax.jit(models.init, static_argnums=(1, 2, 3))
apply = jax.jit(models.apply, static_argnums=2)
batch_logits = jax.jit(models.batch_logits, static_argnums=2)
per_example_losses = jax.jit(
    models.per_example_losses, static_argnums=3, static_argnames="label_smoothing"
)
loss = jax.jit(models.loss, static_argnums=3, static_argnames="label_smoothing")
loss_grad = jax.jit(jax.grad(models.loss), static_argnums=3)
per_example_grads = jax.jit(models.per_example_grads, static_argnums=3)
per_example_grad_norms = jax.jit(models.per_example_grad_norms, static_argnums=3)


@functools.partial(jax.jit, static_argnums=2)
def layer_by_layer(params, x_HWC, spec):
    """Every layer's output, running the layers one after another."""
    outputs, h = [], x_HWC
    for layer, p in zip(spec, models.layer_params(params, spec), strict=True):
        h = models.layer_apply(layer, p, h)
        outputs.append(h)
    return outputs


def batch(seed, shape, n=3):
    return jax.random.normal(jax.random.key(seed), (n, *shape))


def assert_trees_close(actual, expected, rtol=F32_RTOL, atol=F32_ATOL):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=rtol, atol=atol)


def parse_summary(text):
    """Rows of (name, shape string, parameter count) from `models.summary`."""
    rows = []
    assert text.splitlines()[0].split() == ["layer", "output", "shape", "params"]
    for line in text.splitlines()[1:]:
        fields = re.split(r"\s{2,}", line.strip())
        name, shape = fields[0], fields[1] if len(fields) == 3 else ""
        rows.append((name, shape, int(fields[-1].replace(",", ""))))
    return rows


# --------------------------------------------------------------------------- the reference CNN


@pytest.fixture(scope="module")
def reference_params():
    return init(jax.random.key(0), models.REFERENCE_CNN, models.REFERENCE_INPUT_SHAPE)


def test_reference_cnn_has_225034_params_and_flax_names(reference_params):
    params = reference_params
    # The seed counts kernels only (288 + 18,432 + 204,800 + 1,280 = 224,800) and says
    # "~225,000"; with the 32 + 64 + 128 + 10 biases the exact count is 225,034.
    assert models.num_params(params) == 225_034
    shapes = jax.tree.map(lambda a: a.shape, params)
    assert shapes == {
        "conv1": {"kernel": (3, 3, 1, 32), "bias": (32,)},
        "conv2": {"kernel": (3, 3, 32, 64), "bias": (64,)},
        "dense1": {"kernel": (1600, 128), "bias": (128,)},
        "dense2": {"kernel": (128, 10), "bias": (10,)},
    }


def test_reference_cnn_summary():
    rows = parse_summary(models.summary(models.REFERENCE_CNN, models.REFERENCE_INPUT_SHAPE))
    named = [(n, s, c) for n, s, c in rows if n not in ("relu",)]
    assert named == [
        ("conv1", "(26, 26, 32)", 320),
        ("maxpool", "(13, 13, 32)", 0),
        ("conv2", "(11, 11, 64)", 18_496),
        ("maxpool", "(5, 5, 64)", 0),
        ("flatten", "(1600,)", 0),
        ("dense1", "(128,)", 204_928),
        ("dense2", "(10,)", 1_290),
        ("total", "", 225_034),
    ]
    assert sum(c for n, _, c in rows if n != "total") == 225_034


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    ("spec", "input_shape"),
    [
        (models.REFERENCE_CNN, models.REFERENCE_INPUT_SHAPE),
        (SMALL, SMALL_INPUT),
        *OTHER_SPECS.values(),
    ],
    ids=["reference", "small", *OTHER_SPECS],
)
def test_init_shapes_equal_apply_shapes(spec, input_shape, reference_params):
    if spec == models.REFERENCE_CNN:
        params = reference_params
    else:
        params = init(jax.random.key(1), spec, input_shape)
    predicted = models.output_shapes(spec, input_shape)
    x = batch(2, input_shape)[0]
    outputs = layer_by_layer(params, x, spec)
    assert [h.shape for h in outputs] == predicted
    assert bool(jnp.all(jnp.isfinite(outputs[-1])))
    logits = jax.eval_shape(lambda p, x: models.apply(p, x, spec), params, x)  # no compile
    assert logits.shape == predicted[-1] and logits.dtype == jnp.float32


def test_init_and_apply_in_float64():
    with jax.enable_x64(True):
        params = init(jax.random.key(0), SMALL, SMALL_INPUT, jnp.float64)
        assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {np.dtype(np.float64)}
        logits = apply(params, jnp.ones(SMALL_INPUT, jnp.float64), SMALL)
        assert logits.dtype == np.float64


def test_init_kernels_are_lecun_normal(reference_params):
    # Variance 1 / fan_in (fan_in 1600 for dense1): the sample std of 204,800 draws is within
    # ~0.2% of the truth, so 2% can only fail for a wrong scale (e.g. 1 / fan_out = 1/128).
    params = reference_params
    kernel = np.asarray(params["dense1"]["kernel"])
    assert abs(kernel.std() * np.sqrt(1600) - 1.0) < 0.02
    assert all(not np.any(np.asarray(p["bias"])) for p in params.values())


# --------------------------------------------------------------------------- names


def test_explicit_layer_names():
    spec = (
        Conv(2, 3, name="stem"),
        Conv(2, 3),
        ReLU(name="ignored"),
        Flatten(),
        Dense(3, name="head"),
    )
    assert models.layer_names(spec) == ["stem", "conv2", None, None, "head"]
    params = jax.eval_shape(lambda key: models.init(key, spec, (6, 6, 1)), jax.random.key(0))
    assert set(params) == {"stem", "conv2", "head"}  # shapes only, nothing computed
    logits = jax.eval_shape(lambda p: models.apply(p, jnp.ones((6, 6, 1)), spec), params)
    assert logits.shape == (3,)


@pytest.mark.parametrize(
    "spec",
    [
        (Conv(2, name="a"), Conv(2, name="a"), Flatten(), Dense(3)),
        (Conv(2, name="conv2"), Conv(2), Flatten(), Dense(3)),  # clashes with the automatic name
        (Conv(2, name="x"), Flatten(), Dense(3, name="x")),
    ],
)
def test_duplicate_names_are_an_error(spec):
    with pytest.raises(ValueError, match=r"layer names must be unique, got \["):
        models.init(jax.random.key(0), spec, (6, 6, 1))


def test_a_spec_holds_layers():
    with pytest.raises(TypeError, match=r"a spec holds Layer descriptions"):
        models.layer_names((Conv(2), "relu"))


def test_dense_after_conv_without_flatten():
    spec = (Conv(4, 3), ReLU(), Dense(10))
    pattern = (
        r"Dense needs a flat input but gets shape \(6, 6, 4\); "
        r"put Flatten\(\) or GlobalAvgPool\(\) before it"
    )
    with pytest.raises(ValueError, match=pattern):
        models.init(jax.random.key(0), spec, (8, 8, 1))
    with pytest.raises(ValueError, match=pattern):
        models.output_shapes(spec, (8, 8, 1))
    with pytest.raises(ValueError, match=pattern):
        models.summary(spec, (8, 8, 1))


def test_params_not_matching_the_spec():
    params = models.init(jax.random.key(0), SMALL, SMALL_INPUT)
    x = jnp.ones(SMALL_INPUT)
    missing = {k: v for k, v in params.items() if k != "dense2"}
    with pytest.raises(ValueError, match=r"missing \['dense2'\], unexpected \[\]"):
        models.apply(missing, x, SMALL)
    extra = {**params, "conv9": params["conv1"]}
    with pytest.raises(ValueError, match=r"missing \[\], unexpected \['conv9'\]"):
        models.apply(extra, x, SMALL)
    renamed = {("stem" if k == "conv1" else k): v for k, v in params.items()}
    with pytest.raises(
        ValueError,
        match=r"params do not match the spec: missing \['conv1'\], "
        r"unexpected \['stem'\]; build them with cnnjax.models.init",
    ):
        models.batch_logits(renamed, x[None], SMALL)
    other_input = models.init(jax.random.key(0), SMALL, (10, 10, 2))  # dense1 expects 64 features
    with pytest.raises(ValueError, match=r"x has 36 features .* kernel expects 64"):
        models.apply(other_input, x, SMALL)


# --------------------------------------------------------------------------- batches via vmap


@pytest.fixture(scope="module")
def small_case():
    params = init(jax.random.key(3), SMALL, SMALL_INPUT)
    # non-zero biases, so a bias that is dropped or broadcast wrongly shows up
    params = jax.tree.map(lambda a: a + 0.1 if a.ndim == 1 else a, params)
    return params, batch(4, SMALL_INPUT, n=4), jnp.asarray([0, 2, 1, 2])


def test_batch_logits_equals_loop_over_apply(small_case):
    params, x_NHWC, _ = small_case
    looped = jnp.stack([apply(params, x, SMALL) for x in x_NHWC])
    assert_trees_close(batch_logits(params, x_NHWC, SMALL), looped)


def test_per_example_losses_mean_is_the_loss(small_case):
    params, x_NHWC, labels = small_case
    per_example = per_example_losses(params, x_NHWC, labels, SMALL, label_smoothing=0.1)
    assert per_example.shape == (4,)
    looped = [
        losses.cross_entropy(apply(params, x, SMALL), y, label_smoothing=0.1)
        for x, y in zip(x_NHWC, labels, strict=True)
    ]
    assert_trees_close(per_example, jnp.stack(looped))
    total = loss(params, x_NHWC, labels, SMALL, label_smoothing=0.1)
    np.testing.assert_allclose(float(total), float(jnp.mean(per_example)), rtol=F32_RTOL)


def test_per_example_grads_average_to_the_batch_gradient(small_case):
    params, x_NHWC, labels = small_case
    per_example = per_example_grads(params, x_NHWC, labels, SMALL)
    assert jax.tree.map(lambda g: g.shape, per_example) == jax.tree.map(
        lambda p: (4, *p.shape), params
    )
    mean = jax.tree.map(lambda g: jnp.sum(g, axis=0) / 4, per_example)
    assert_trees_close(mean, loss_grad(params, x_NHWC, labels, SMALL))
    # Each row is that example's own gradient, not a copy of the batch's.
    one = loss_grad(params, x_NHWC[1:2], labels[1:2], SMALL)
    assert_trees_close(jax.tree.map(lambda g: g[1], per_example), one)


def test_per_example_grad_norms_by_hand(small_case):
    params, x_NHWC, labels = small_case
    grads = per_example_grads(params, x_NHWC, labels, SMALL)
    leaves = [np.asarray(g, np.float64) for g in jax.tree.leaves(grads)]
    by_hand = [np.sqrt(sum(np.sum(g[n] ** 2) for g in leaves)) for n in range(4)]
    norms = per_example_grad_norms(params, x_NHWC, labels, SMALL)
    assert norms.shape == (4,)
    np.testing.assert_allclose(np.asarray(norms), by_hand, rtol=F32_RTOL)
    assert len(set(np.round(by_hand, 6))) == 4  # distinct examples, distinct norms


# --------------------------------------------------------------------------- specs are data


def test_spec_is_hashable_and_a_static_jit_argument(small_case):
    params, x_NHWC, _ = small_case
    assert hash(SMALL) == hash(tuple(SMALL)) and hash(models.REFERENCE_CNN) is not None
    jitted = jax.jit(models.apply, static_argnums=2)
    # a spec equal to SMALL but built anew hits the same compiled program (hash and ==)
    rebuilt = tuple(type(layer)(**vars(layer)) for layer in SMALL)
    assert rebuilt == SMALL and rebuilt is not SMALL
    assert_trees_close(jitted(params, x_NHWC[0], rebuilt), models.apply(params, x_NHWC[0], SMALL))


def test_lists_in_a_spec_are_frozen_to_tuples():
    layer = Conv(4, [3, 2], stride=[1, 2], padding=[[1, 0], [0, 1]])
    assert layer.kernel_size == (3, 2) and layer.stride == (1, 2)
    assert layer.padding == ((1, 0), (0, 1))
    assert layer == Conv(4, (3, 2), stride=(1, 2), padding=((1, 0), (0, 1)))
    assert hash(layer) == hash(Conv(4, (3, 2), stride=(1, 2), padding=((1, 0), (0, 1))))
    assert MaxPool([2, 2], padding=[[0, 1], [0, 1]]).padding == ((0, 1), (0, 1))
    spec = (layer, ReLU(), Flatten(), Dense(2))
    params = models.init(jax.random.key(0), spec, (5, 5, 1))
    out = apply(params, jnp.ones((5, 5, 1)), spec)
    assert out.shape == (2,)


def test_layers_are_immutable():
    with pytest.raises(AttributeError):
        Conv(4).features = 8


def test_init_is_deterministic_per_key():
    a = models.init(jax.random.key(7), SMALL, SMALL_INPUT)
    b = models.init(jax.random.key(7), SMALL, SMALL_INPUT)
    c = models.init(jax.random.key(8), SMALL, SMALL_INPUT)
    jitted = init(jax.random.key(7), SMALL, SMALL_INPUT)
    for x, y, z in zip(*map(jax.tree.leaves, (a, b, jitted)), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        np.testing.assert_array_equal(np.asarray(x), np.asarray(z))  # jit draws the same numbers
    for name in a:
        assert not np.allclose(np.asarray(a[name]["kernel"]), np.asarray(c[name]["kernel"]))
    # and each layer draws from its own key: no two kernels of one shape are the same numbers
    twin = (Dense(4), Dense(4))
    p = models.init(jax.random.key(7), (Flatten(), *twin), (2, 2, 1))
    assert not np.allclose(np.asarray(p["dense1"]["kernel"]), np.asarray(p["dense2"]["kernel"]))


# --------------------------------------------------------------------------- the boundary
# SMALL has 3 classes; labels 3 (index 1) and -1 (index 3) are out of range.
BAD_LABELS = jnp.asarray([0, 3, 1, -1])
BAD_LABELS_MESSAGE = r"labels must lie in \[0, 3\) for 3 classes, got 3 at index 1, -1 at index 3\b"
LOSS_ENTRY_POINTS = {
    "loss": models.loss,
    "per_example_losses": models.per_example_losses,
    "per_example_grads": models.per_example_grads,
    "per_example_grad_norms": models.per_example_grad_norms,
    "grad_of_loss": jax.grad(models.loss),
    "grad_of_loss_twins": lambda *args: jax.grad(models.loss)(*args, fns=models.HAND_DERIVED),
}


@pytest.mark.parametrize("entry", LOSS_ENTRY_POINTS.values(), ids=LOSS_ENTRY_POINTS.keys())
def test_concrete_out_of_range_labels_are_refused_before_the_vmap(small_case, entry):
    params, x_NHWC, _ = small_case
    with pytest.raises(ValueError, match=BAD_LABELS_MESSAGE):
        entry(params, x_NHWC, BAD_LABELS, SMALL)
    with pytest.raises(ValueError, match=r"labels_N must hold a label per example of x_NHWC"):
        entry(params, x_NHWC, BAD_LABELS[:3], SMALL)


def test_traced_labels_are_not_checked_and_an_out_of_range_one_adds_zero(small_case):
    """Under jit the labels are tracers, so the program compiles and runs: one_hot gives an
    out-of-range label an all-zero target, so its example adds 0 to the sum and still counts
    in the mean's N."""
    params, x_NHWC, _ = small_case
    in_range = per_example_losses(params, x_NHWC, jnp.asarray([0, 0, 1, 0]), SMALL)
    got = loss(params, x_NHWC, BAD_LABELS, SMALL)
    want = (in_range[0] + in_range[2]) / 4
    np.testing.assert_allclose(float(got), float(want), rtol=F32_RTOL)


class _CountingNumpy:
    """numpy as cnnjax.losses sees it, counting np.asarray: the label check's read to the host."""

    def __init__(self):
        self.reads = 0

    def __getattr__(self, name):
        return getattr(np, name)

    def asarray(self, *args, **kwargs):
        self.reads += 1
        return np.asarray(*args, **kwargs)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_jitted_training_step_reads_no_label_to_the_host(small_case, monkeypatch, dtype):
    from cnnjax.training import train  # the step whose hot path must stay free of host syncs

    params, x_NHWC, labels = small_case
    spy = _CountingNumpy()
    monkeypatch.setattr(losses, "np", spy)
    for gradients in train.GRADIENTS:
        step = jax.jit(
            functools.partial(train.loss_logits_grads, spec=SMALL, dtype=dtype),
            static_argnames="gradients",
        )
        step(params, x_NHWC, labels, gradients=gradients)[0].block_until_ready()
    assert spy.reads == 0
    models.loss(params, x_NHWC, labels, SMALL)  # eager: the spy does see the check's read
    assert spy.reads == 1


@pytest.mark.parametrize("dtype", ["uint8", "int32", "bool"])
def test_integer_images_are_refused_with_the_cast_that_scales_them(small_case, dtype):
    params, x_NHWC, labels = small_case
    pixels = (jnp.abs(x_NHWC) * 100).astype(dtype)
    message = (
        rf"the network takes float images, got dtype {dtype}; scale 0..255 pixels to floats: "
        r"x.astype\(jnp.float32\) / 255"
    )
    for call in (
        lambda: models.apply(params, pixels[0], SMALL),
        lambda: models.batch_logits(params, pixels, SMALL),
        lambda: models.loss(params, pixels, labels, SMALL),
        lambda: loss(params, pixels, labels, SMALL),  # dtypes are static: checked under jit too
    ):
        with pytest.raises(ValueError, match=message):
            call()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_images_are_cast_up_to_the_params_exactly(small_case, dtype):
    """float16 and bfloat16 values are all float32 values, so the cast loses nothing: the
    results equal those of the float32 copy, bit for bit."""
    params, x_NHWC, labels = small_case
    low = x_NHWC.astype(dtype)
    up = low.astype(jnp.float32)
    logits = batch_logits(params, low, SMALL)
    assert logits.dtype == jnp.float32
    np.testing.assert_array_equal(logits, batch_logits(params, up, SMALL))
    np.testing.assert_array_equal(apply(params, low[0], SMALL), apply(params, up[0], SMALL))
    np.testing.assert_array_equal(loss(params, low, labels, SMALL), loss(params, up, labels, SMALL))
    g_low, g_up = loss_grad(params, low, labels, SMALL), loss_grad(params, up, labels, SMALL)
    jax.tree.map(np.testing.assert_array_equal, g_low, g_up)


def test_images_the_params_dtype_would_round_are_refused(small_case):
    params, x_NHWC, labels = small_case
    half_params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
    with pytest.raises(
        ValueError,
        match=r"images of dtype float16 do not fit the params' bfloat16 exactly; cast one to the "
        r"other: x.astype\(jnp.bfloat16\) or jax.tree.map",
    ):
        models.loss(half_params, x_NHWC.astype(jnp.float16), labels, SMALL)
    with jax.enable_x64(True):
        with pytest.raises(ValueError, match=r"images of dtype float64 do not fit the params'"):
            models.batch_logits(params, np.asarray(x_NHWC, np.float64), SMALL)


def test_an_empty_batch_has_no_mean_loss_but_empty_per_example_results(small_case):
    params, x_NHWC, labels = small_case
    empty_x, empty_labels = x_NHWC[:0], labels[:0]
    message = r"x_NHWC of shape \(0, 8, 8, 2\) holds no examples; a batch mean needs one"
    for call in (
        lambda: models.loss(params, empty_x, empty_labels, SMALL),
        lambda: loss(params, empty_x, empty_labels, SMALL),  # shapes are static: under jit too
        lambda: loss_grad(params, empty_x, empty_labels, SMALL),
    ):
        with pytest.raises(ValueError, match=message):
            call()
    assert batch_logits(params, empty_x, SMALL).shape == (0, 3)
    assert per_example_losses(params, empty_x, empty_labels, SMALL).shape == (0,)
