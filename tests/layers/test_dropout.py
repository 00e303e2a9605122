"""layers.Dropout: Flax's mask for the same key and batch, the kept fraction and scale, eval mode,
the hand vjp against autodiff and finite differences, its twin, and keys in a network."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import backprop, models
from cnnjax.layers import BATCH, HAND_DERIVED, Context, Dropout

TOL_AUTODIFF = 1e-10  # float64; both sides multiply by the same mask and 1 / (1 - rate)
TOL_FD, FD_H = 1e-5, 1e-6  # float64 central FD of a linear function: rounding ~eps / h only
NET = (models.Flatten(), models.Dense(6), models.ReLU(), Dropout(0.5), models.Dense(3))


def _batch(layer, x_N, ctx):
    return jax.vmap(lambda x: layer.apply({}, x, ctx), axis_name=BATCH)(x_N)


def _x(shape=(4, 5, 5, 3), seed=0, dtype=jnp.float32):
    return jax.random.normal(jax.random.key(seed), shape, dtype)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_the_mask_is_flax_linens_and_nnxs_for_the_same_key(rate):
    import flax.linen as nn
    from flax import nnx

    x_N, key = _x(), jax.random.key(3)
    y = _batch(Dropout(rate), x_N, Context(True, key))
    # given the key itself
    linen = nn.Dropout(rate).apply({}, x_N, deterministic=False, rng=key)
    assert np.array_equal(y, linen)
    assert np.array_equal(y, nnx.Dropout(rate)(x_N, deterministic=False, rngs=key))
    module = Dropout(rate).nnx(x_N.shape[1:], nnx.Rngs(dropout=0))
    assert np.array_equal(y, module(x_N, rngs=key))  # a call's key before the module's stream

    # given rngs={"dropout": key}, linen draws with the key its make_rng derives from it
    class DerivedKey(nn.Module):
        @nn.compact
        def __call__(self):
            return self.make_rng("dropout")

    linen = nn.Dropout(rate).apply({}, x_N, deterministic=False, rngs={"dropout": key})
    derived = DerivedKey().apply({}, rngs={"dropout": key})
    assert np.array_equal(_batch(Dropout(rate), x_N, Context(True, derived)), linen)
    assert not np.array_equal(y, linen)  # the keys differ, and so do the masks


def test_the_kept_fraction_is_one_minus_rate_and_kept_units_are_scaled():
    rate, x_N = 0.3, _x((64, 8, 8, 4), seed=1)  # 16384 units
    y = np.asarray(_batch(Dropout(rate), x_N, Context(True, jax.random.key(0))))
    kept = y != 0
    # binomial: sd of the fraction sqrt(0.3 * 0.7 / 16384) = 0.0036; 5 sd
    assert abs(kept.mean() - (1 - rate)) <= 0.018
    np.testing.assert_allclose(y[kept], np.asarray(x_N)[kept] / (1 - rate), rtol=1e-6)
    rows = kept.reshape(64, -1)
    assert not all(np.array_equal(rows[0], r) for r in rows[1:])  # each example its own row


def test_eval_mode_and_rate_zero_are_the_identity_without_a_key():
    x_N = _x()
    np.testing.assert_array_equal(_batch(Dropout(0.5), x_N, Context(False)), x_N)
    np.testing.assert_array_equal(_batch(Dropout(0.0), x_N, Context(True)), x_N)
    logits = models.batch_logits(models.init(jax.random.key(0), NET, (5, 5, 3)), x_N, NET)
    assert logits.shape == (4, 3)


def test_the_linen_counterpart_drops_in_train_mode_only():
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train):
            return Dropout(0.5).flax(x, train=train)

    x_N = _x()
    np.testing.assert_array_equal(Net().apply({}, x_N, False), x_N)
    y = np.asarray(Net().apply({}, x_N, True, rngs={"dropout": jax.random.key(0)}))
    assert 0.3 < (y == 0).mean() < 0.7
    np.testing.assert_allclose(y[y != 0], 2 * np.asarray(x_N)[y != 0], rtol=1e-6)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, "0.5", True])
def test_a_rate_outside_zero_to_one_is_refused_at_construction(rate):
    with pytest.raises(ValueError, match=r"Dropout rate must lie in \[0, 1\)"):
        Dropout(rate)


def test_train_mode_without_a_key_says_to_pass_one():
    params = models.init(jax.random.key(0), NET, (5, 5, 3))
    with pytest.raises(ValueError, match="Dropout in train mode needs a random key; pass key="):
        models.loss(params, _x(), jnp.array([0, 1, 2, 0]), NET, train=True)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(3, 4, 2), (7,)], ids=str)
def test_hand_vjp_equals_autodiff_and_finite_differences(shape, train):
    layer, rng = Dropout(0.4), np.random.default_rng(0)
    with jax.enable_x64(True):
        ctx = Context(train, jax.random.key(1))
        x_N, dy_N = (jnp.asarray(rng.normal(size=(3, *shape))) for _ in range(2))
        f = lambda x_N: _batch(layer, x_N, ctx)  # noqa: E731
        y, pullback = jax.vjp(f, x_N)
        (dx_auto,) = pullback(dy_N)
        dx_hand, dp = layer.vjp_batch({}, x_N, dy_N, ctx)
        assert dp == {}
        np.testing.assert_allclose(dx_hand, dx_auto, rtol=TOL_AUTODIFF, atol=0)
        v = jnp.asarray(rng.normal(size=x_N.shape))
        fd = (jnp.vdot(dy_N, f(x_N + FD_H * v)) - jnp.vdot(dy_N, f(x_N - FD_H * v))) / (2 * FD_H)
        assert abs(float(jnp.vdot(dx_hand, v) - fd)) <= TOL_FD * abs(float(fd))
        if train:  # the rule's mask is the forward's: dropped units get no gradient
            np.testing.assert_array_equal(dx_hand == 0, y == 0)


def test_the_twin_and_backprop_give_the_plain_gradient():
    with jax.enable_x64(True):
        params = models.init(jax.random.key(0), NET, (5, 5, 3), jnp.float64)
        x, labels = _x(dtype=jnp.float64), jnp.array([0, 1, 2, 0])
        grad = jax.jit(jax.grad(models.loss), static_argnames=("spec", "fns", "train"))
        mode = dict(spec=NET, train=True, key=jax.random.key(4))
        plain = grad(params, x, labels, **mode)
        twin = grad(params, x, labels, fns=HAND_DERIVED, **mode)
        hand = backprop.backprop(params, x, labels, **mode).grads
        for got in (twin, hand):
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(plain), strict=True):
                np.testing.assert_allclose(a, b, rtol=TOL_AUTODIFF, atol=1e-15)


def test_a_network_in_train_mode_is_deterministic_for_a_key():
    params = models.init(jax.random.key(0), NET, (5, 5, 3))
    x, labels = _x(), jnp.array([0, 1, 2, 0])
    loss = lambda key: float(models.loss(params, x, labels, NET, train=True, key=key))  # noqa: E731
    k1, k2 = jax.random.key(1), jax.random.key(2)
    assert loss(k1) == loss(k1)
    assert loss(k1) != loss(k2)
    assert loss(k1) != float(models.loss(params, x, labels, NET))  # eval: no dropout
