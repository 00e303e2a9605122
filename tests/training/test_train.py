"""cnnjax.training.train: schedules by hand, determinism, hand-derived == jax.grad training
curves."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cnnjax import losses, models
from cnnjax.training import train
from configs import default
from tests.builders import SMALL_SPEC, run_steps, small_config, synthetic

# The two gradient paths differ by float32 rounding (~1e-7 relative per step); 200 SGD steps
# on a smooth problem keep that growth small. 1e-4 of the loss is far below what a wrong
# gradient does to a curve (a different trajectory within a few steps).
CURVE_RTOL = 1e-4


def optim(**overrides):
    config = default.get_config().optim
    config.update(overrides)
    return config


def test_schedules_by_hand():
    warm = train.learning_rate_schedule(optim(schedule="constant", warmup_epochs=1.0), 10, 5)
    assert float(warm(0)) == 0.0 and float(warm(5)) == pytest.approx(0.025)
    assert float(warm(10)) == pytest.approx(0.05) and float(warm(49)) == pytest.approx(0.05)
    cosine = train.learning_rate_schedule(optim(schedule="cosine", warmup_epochs=0.0), 10, 5)
    assert float(cosine(0)) == pytest.approx(0.05)
    assert float(cosine(25)) == pytest.approx(0.025)  # half way: (1 + cos(pi/2)) / 2
    assert float(cosine(50)) == pytest.approx(0.0, abs=1e-9)
    step = train.learning_rate_schedule(
        optim(schedule="step", warmup_epochs=0.0, decay_epochs=(2, 4), decay_factor=0.1), 10, 5
    )
    assert [float(step(t)) for t in (19, 20, 39, 40)] == pytest.approx([0.05, 5e-3, 5e-3, 5e-4])
    with pytest.raises(ValueError, match=r"optim\.schedule must be one of"):
        train.learning_rate_schedule(optim(schedule="linear"), 10, 5)


def test_unknown_gradient_source_is_an_error():
    params = models.init(jax.random.key(0), SMALL_SPEC, (12, 12, 1))
    with pytest.raises(ValueError, match=r"train\.gradients must be one of"):
        train.loss_logits_grads(
            params,
            jnp.zeros((2, 12, 12, 1)),
            jnp.zeros(2, jnp.int32),
            SMALL_SPEC,
            gradients="numeric",
        )


def test_epoch_indices_are_a_deterministic_permutation_per_epoch():
    state = train.init_state(0, SMALL_SPEC, (12, 12, 1), train.make_optimizer(optim(), 10, 1))
    first = np.asarray(train.epoch_indices(state, 0, 50, 16))
    assert first.shape == (3, 16) and len(set(first.ravel())) == 48  # the last 2 are dropped
    np.testing.assert_array_equal(first, train.epoch_indices(state, 0, 50, 16))
    assert not np.array_equal(first, train.epoch_indices(state, 1, 50, 16))


def test_evaluate_matches_a_plain_computation_with_a_partial_last_batch():
    images, labels = synthetic(n=50)
    params = models.init(jax.random.key(0), SMALL_SPEC, (12, 12, 1))
    result = train.evaluate(params, images, labels, spec=SMALL_SPEC, batch_size=16)
    logits = models.batch_logits(params, images.astype(jnp.float32) / 255.0, SMALL_SPEC)
    predictions = np.argmax(np.asarray(logits), axis=1)
    np.testing.assert_array_equal(result["predictions"], predictions)
    assert float(result["accuracy"]) == pytest.approx(np.mean(predictions == np.asarray(labels)))


def test_test_time_flips_average_each_images_logits_with_its_mirrors():
    images, labels = synthetic(n=50)
    params = models.init(jax.random.key(0), SMALL_SPEC, (12, 12, 1))
    x = images.astype(jnp.float32) / 255.0
    mean = (models.batch_logits(params, x, SMALL_SPEC) + models.batch_logits(
        params, x[:, :, ::-1], SMALL_SPEC)) / 2  # fmt: skip
    evaluate = lambda images, flip: train.evaluate(  # noqa: E731
        params, images, labels, spec=SMALL_SPEC, batch_size=16, flip=flip
    )
    flipped = evaluate(images, True)
    np.testing.assert_array_equal(flipped["predictions"], np.argmax(np.asarray(mean), axis=1))
    want = np.mean(np.asarray(losses.cross_entropy(mean, labels)))
    assert float(flipped["loss"]) == pytest.approx(want, rel=1e-6)  # float32 sums apart
    assert float(flipped["loss"]) != pytest.approx(float(evaluate(images, False)["loss"]))
    # An image that is its own mirror image has the same logits either way.
    symmetric = jnp.concatenate([images[:, :, :6], images[:, :, 5::-1]], axis=2)
    same = evaluate(symmetric, False)["loss"], evaluate(symmetric, True)["loss"]
    assert float(same[1]) == pytest.approx(float(same[0]), rel=1e-6)


def test_training_learns_and_is_a_pure_function_of_config_and_seed():
    images, labels = synthetic()
    state_a, curve_a = run_steps(small_config(), images, labels, epochs=3)
    state_b, curve_b = run_steps(small_config(), images, labels, epochs=3)
    np.testing.assert_array_equal(curve_a, curve_b)
    for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b), strict=True):
        np.testing.assert_array_equal(a, b)
    assert curve_a[-8:].mean() < 0.5 * curve_a[:8].mean()
    other = small_config()
    other.seed = 1
    assert not np.array_equal(run_steps(other, images, labels, epochs=1)[1], curve_a[:16])


@pytest.mark.parametrize("gradients", ["hand", "custom_vjp"])
def test_hand_derived_gradients_give_jax_grads_loss_curve_over_200_steps(gradients):
    images, labels = synthetic(n=320)  # 20 steps per epoch, 10 epochs
    spec = (*models.REFERENCE_CNN[:3], models.Flatten(), models.Dense(3))
    _, reference = run_steps(small_config("autodiff"), images, labels, 10, spec)
    _, curve = run_steps(small_config(gradients), images, labels, 10, spec)
    assert len(curve) == 200
    assert np.max(np.abs(curve - reference) / np.abs(reference)) < CURVE_RTOL
    assert reference[-20:].mean() < 0.5 * reference[:20].mean()  # it did learn


def test_config_fields_the_trainer_reads_exist():
    config = default.get_config()
    assert isinstance(config, ml_collections.ConfigDict)
    assert config.train.gradients in train.GRADIENTS and config.optim.schedule in train.SCHEDULES
    assert config.model.spec in models.SPECS


def test_scanned_steps_equal_the_python_loop():
    images, labels = synthetic(n=64)
    loop_state, loop_curve = run_steps(small_config(scan="no"), images, labels, epochs=2)
    scan_state, scan_curve = run_steps(small_config(scan="yes"), images, labels, epochs=2)
    np.testing.assert_allclose(scan_curve, loop_curve, rtol=CURVE_RTOL)
    for a, b in zip(jax.tree.leaves(scan_state), jax.tree.leaves(loop_state), strict=True):
        np.testing.assert_allclose(a, b, rtol=CURVE_RTOL, atol=1e-6)


# bfloat16 keeps 8 bits of mantissa (eps 2^-8 = 3.9e-3): each step's loss rounds by about that
# much relative, and measured over these 200 steps the bfloat16 curve stays within 3.4e-3 of the
# float32 one (all three gradient paths). 2e-2 keeps ~6x; a wrong cast (e.g. a float32 update
# lost, or gradients in the wrong layer order) moves the curve by O(1).
BF16_CURVE_RTOL = 2e-2


@pytest.mark.parametrize("gradients", ["autodiff", "hand"])
def test_bfloat16_mixed_precision_learns_and_stays_near_float32(gradients):
    images, labels = synthetic(n=320)
    spec = (*models.REFERENCE_CNN[:3], models.Flatten(), models.Dense(3))
    _, reference = run_steps(small_config(gradients), images, labels, 10, spec)
    state16, curve = run_steps(
        small_config(gradients, compute_dtype="bfloat16"), images, labels, 10, spec
    )
    assert np.max(np.abs(curve - reference) / np.abs(reference)) < BF16_CURVE_RTOL
    assert curve[-20:].mean() < 0.5 * curve[:20].mean()  # it did learn
    assert not np.array_equal(curve, reference)  # bfloat16 did round
    for leaf in jax.tree.leaves((state16.params, state16.opt_state)):
        assert leaf.dtype in (jnp.float32, jnp.int32)  # params and optimizer state: float32


@pytest.mark.parametrize("gradients", ["autodiff", "hand", "custom_vjp"])
def test_bfloat16_reaches_every_convolution_and_dot(gradients):
    params = models.init(jax.random.key(0), SMALL_SPEC, (12, 12, 1))
    x, labels = jnp.zeros((2, 12, 12, 1)), jnp.zeros(2, jnp.int32)

    def in_bfloat16(p):
        return train.loss_logits_grads(
            p, x, labels, SMALL_SPEC, gradients=gradients, dtype="bfloat16"
        )

    jaxpr = jax.make_jaxpr(in_bfloat16)(params)
    heavy_ops = ("conv_general_dilated", "dot_general")
    heavy = [e for e in _equations(jaxpr.jaxpr) if e.primitive.name in heavy_ops]
    assert len(heavy) >= 5  # conv and dense forward, conv kernel and dense dx/dw backward
    assert all(v.aval.dtype == jnp.bfloat16 for e in heavy for v in e.invars)
    loss, logits, g, _ = in_bfloat16(params)
    assert loss.dtype == logits.dtype == jnp.float32
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(g))
    with pytest.raises(ValueError, match=r"train\.compute_dtype must be one of"):
        train.loss_logits_grads(params, x, labels, SMALL_SPEC, gradients=gradients, dtype="float16")


def _equations(jaxpr):
    """Every equation of a jaxpr, those inside sub-jaxprs (custom_vjp, pjit, ...) included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _equations(inner)
