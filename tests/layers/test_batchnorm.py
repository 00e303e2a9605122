"""layers.BatchNorm: the hand vjp (through the batch statistics in train mode) against autodiff
and finite differences, its custom_vjp twin, the running statistics, Flax linen and nnx, and a
batch sharded over 4 CPU devices (a subprocess: `python -m tests.layers.test_batchnorm` is the
worker and prints its measurements as one JSON line).
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import backprop, models
from cnnjax.layers import BATCH, HAND_DERIVED, BatchNorm, Context
from tests.builders import REPO

# float64 hand rule vs autodiff: the same sums in another order, ~1e-14 measured.
TOL_AUTODIFF = 1e-10
# float64 central FD with h = 1e-6: truncation ~h^2 |f'''| and rounding ~eps / h ~ 1e-10.
TOL_FD, FD_H = 1e-5, 1e-6
# float32 vs Flax: the same formula, batch sums of <= 100 values in another order (mean of
# means vs one mean): a few eps (1.2e-7) each, amplified by 1 / sigma ~ 1 here; 1e-5 ~ 80 eps.
TOL_FLAX = 1e-5
# float32, 4 devices vs 1: the batch sums split in 4 partial sums, then an all-reduce.
TOL_DEVICES = 1e-5
SHAPES = [(4, 3, 2), (5,)]  # after a conv; after Dense


def _rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _tree_rel(a, b) -> float:
    """The largest difference of a leaf relative to the largest reference leaf: a conv bias
    before BatchNorm has gradient 0 (the normalization subtracts any shift), up to rounding."""
    pairs = list(zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
    scale = max(float(np.abs(np.asarray(y)).max()) for _, y in pairs)
    return max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in pairs) / scale


def _draw(rng, layer, shape, n, dtype):
    """Random params, state (var > 0), x_N and dy_N."""
    c = shape[-1]
    p = {"scale": rng.normal(size=c) + 1.0, "bias": rng.normal(size=c)}
    state = {"mean": rng.normal(size=c), "var": rng.uniform(0.5, 2.0, size=c)}
    x_N, dy_N = rng.normal(size=(n, *shape)) * 2 + 0.5, rng.normal(size=(n, *shape))
    cast = lambda t: jax.tree.map(lambda a: jnp.asarray(a, dtype), t)  # noqa: E731
    return cast(p), cast(state), cast(x_N), cast(dy_N)


def _forward_N(layer, ctx):
    return lambda p, x_N: jax.vmap(lambda x: layer.apply(p, x, ctx), axis_name=BATCH)(x_N)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_hand_vjp_equals_autodiff_and_finite_differences(shape, train):
    rng = np.random.default_rng(len(shape) + train)
    layer = BatchNorm(epsilon=1e-3)
    with jax.enable_x64(True):
        p, state, x_N, dy_N = _draw(rng, layer, shape, 3, jnp.float64)
        ctx = Context(train, None, state)
        f = _forward_N(layer, ctx)
        _, pullback = jax.vjp(f, p, x_N)
        dp_auto, dx_auto = pullback(dy_N)
        dx_hand, dp_hand = layer.vjp_batch(p, x_N, dy_N, ctx)
        assert _rel(dx_hand, dx_auto) <= TOL_AUTODIFF
        assert _tree_rel(dp_hand, dp_auto) <= TOL_AUTODIFF
        # directional central differences of <dy, f(p + h v_p, x + h v_x)>
        v_p = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), p)
        v_x = jnp.asarray(rng.normal(size=x_N.shape))
        g = lambda h: jnp.vdot(dy_N, f(jax.tree.map(lambda a, v: a + h * v, p, v_p), x_N + h * v_x))  # noqa: E731
        fd = (g(FD_H) - g(-FD_H)) / (2 * FD_H)
        hand = jnp.vdot(dx_hand, v_x) + sum(jnp.vdot(dp_hand[k], v_p[k]) for k in p)
        assert abs(float(hand - fd)) <= TOL_FD * abs(float(fd))
        if train:  # a planted bug: the rule without the terms through the statistics
            frozen_dx, _ = layer.vjp_batch(p, x_N, dy_N, Context(False, None, state))
            assert _rel(frozen_dx, dx_auto) > 1e3 * TOL_AUTODIFF


NET = (
    models.Conv(3, 2),
    BatchNorm(momentum=0.9),
    models.ReLU(),
    models.Flatten(),
    models.Dense(5),
    BatchNorm(),
    models.Dense(3),
)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_the_twin_and_backprop_give_the_plain_gradient(train):
    with jax.enable_x64(True):
        params = models.init(jax.random.key(0), NET, (5, 5, 2), jnp.float64)
        state = models.init_state(NET, (5, 5, 2), jnp.float64)
        x = jax.random.normal(jax.random.key(1), (4, 5, 5, 2), jnp.float64)
        labels = jnp.array([0, 1, 2, 0])
        mode = dict(state=state, train=train)
        grad = jax.jit(jax.grad(models.loss), static_argnames=("spec", "fns", "train"))
        plain = grad(params, x, labels, spec=NET, **mode)
        twin = grad(params, x, labels, spec=NET, fns=HAND_DERIVED, **mode)
        hand = backprop.backprop(params, x, labels, NET, **mode).grads
        for got in (twin, hand):
            assert _tree_rel(got, plain) <= TOL_AUTODIFF


def test_train_mode_updates_the_running_stats_and_eval_uses_them():
    layer = BatchNorm(momentum=0.9, epsilon=1e-3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4, 3, 2)).astype(np.float32) * 3 + 1
    params = {"batchnorm1": {"scale": np.float32([2.0, 0.5]), "bias": np.float32([1.0, -1.0])}}
    state = {"batchnorm1": {"mean": np.float32([0.5, -0.5]), "var": np.float32([2.0, 3.0])}}
    y, new = models.batch_apply(params, x, (layer,), state=state, train=True)
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    p, s = params["batchnorm1"], state["batchnorm1"]
    np.testing.assert_allclose(new["batchnorm1"]["mean"], 0.9 * s["mean"] + 0.1 * mean, rtol=1e-6)
    np.testing.assert_allclose(new["batchnorm1"]["var"], 0.9 * s["var"] + 0.1 * var, rtol=1e-6)
    want = (x - mean) / np.sqrt(var + 1e-3) * p["scale"] + p["bias"]
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    y_eval, same = models.batch_apply(params, x, (layer,), state=new)
    m, v = (np.asarray(new["batchnorm1"][k]) for k in ("mean", "var"))
    np.testing.assert_allclose(y_eval, (x - m) / np.sqrt(v + 1e-3) * p["scale"] + p["bias"], 1e-5)
    assert _tree_rel(same, new) == 0  # eval mode hands the state back as given
    one = models.apply(params, x[0], (layer,), state=new)  # one example, eval mode
    np.testing.assert_allclose(one, y_eval[0], rtol=1e-6)


def _linen_values(layer, p, state, x_N, dy_N, train):
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train):
            return layer.linen("batchnorm1")(x, train)

    def f(p, x):
        variables = {"params": {"batchnorm1": p}, "batch_stats": {"batchnorm1": state}}
        y, updated = Net().apply(variables, x, train, mutable=["batch_stats"])
        return jnp.vdot(y, dy_N), (y, updated["batch_stats"]["batchnorm1"])

    (_, (y, new)), (dp, dx) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(p, x_N)
    return y, new, dp, dx


def _nnx_values(layer, p, state, x_N, dy_N, train):
    from flax import nnx

    module = layer.nnx(x_N.shape[1:], nnx.Rngs(0))
    for name, value in (*p.items(), *state.items()):
        getattr(module, name)[...] = value

    def f(m, x):
        y = m(x, use_running_average=not train)
        return jnp.vdot(y, dy_N), y

    grad = nnx.value_and_grad(f, argnums=(0, 1), has_aux=True)
    (_, y), (dp, dx) = grad(module, x_N)  # updates the module's BatchStat in train mode
    new = {k: getattr(module, k)[...] for k in state}
    return y, new, {k: dp[k][...] for k in p}, dx


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_outputs_gradients_and_stats_equal_flax_linen_and_nnx(shape, train):
    layer = BatchNorm(momentum=0.8)
    p, state, x_N, dy_N = _draw(np.random.default_rng(7), layer, shape, 4, jnp.float32)
    ctx = Context(train, None, state)
    y = _forward_N(layer, ctx)(p, x_N)
    new = jax.vmap(lambda x: layer.next_state(p, x, ctx), axis_name=BATCH, out_axes=None)(x_N)
    new = new if train else state
    dx, dp = layer.vjp_batch(p, x_N, dy_N, ctx)
    for values in (_linen_values, _nnx_values):
        fy, fnew, fdp, fdx = values(layer, p, state, x_N, dy_N, train)
        assert _rel(y, fy) <= TOL_FLAX and _rel(dx, fdx) <= TOL_FLAX, values.__name__
        assert _tree_rel(dp, dict(fdp)) <= TOL_FLAX and _tree_rel(new, dict(fnew)) <= TOL_FLAX


# ------------------------------------------------------------------------------ 4 devices


def four_devices() -> dict:
    """Train-mode loss, logits, grads and new state of a batch of 8 sharded over 4 devices (jit,
    GSPMD) against the same on one device, by autodiff and by the hand rules."""
    from cnnjax import parallel

    assert jax.device_count() == 4, jax.devices()
    params = models.init(jax.random.key(0), NET, (5, 5, 2))
    state = models.init_state(NET, (5, 5, 2))
    x = np.asarray(jax.random.normal(jax.random.key(1), (8, 5, 5, 2))) * 2 + 1
    labels = np.arange(8) % 3

    def autodiff(params, state, x, labels):
        def f(p):
            logits, new = models.batch_apply(p, x, NET, state=state, train=True)
            ce = jax.vmap(lambda z, y: -jax.nn.log_softmax(z)[y])(logits, labels)
            return jnp.mean(ce), (logits, new)

        (loss, (logits, new)), grads = jax.value_and_grad(f, has_aux=True)(params)
        return loss, logits, grads, new

    def hand(params, state, x, labels):
        return tuple(backprop.backprop(params, x, labels, NET, state=state, train=True))

    mesh, one = parallel.make_mesh(), jax.devices()[:1]
    out = {}
    for name, step in (("autodiff", autodiff), ("hand", hand)):
        single = jax.jit(step)(*jax.device_put((params, state, x, labels), one[0]))
        args = (*parallel.put_replicated((params, state), mesh), parallel.put_sharded(x, mesh, 0))
        sharded = jax.jit(step)(*args, parallel.put_sharded(labels, mesh, 0))
        out[name] = _tree_rel(sharded, single)
        out[f"{name}_new_state"] = _tree_rel(sharded[3], single[3])
    quarter = jax.jit(autodiff)(params, state, x[:2], labels[:2])[3]  # one device's examples
    out["quarter_state"] = _tree_rel(quarter, single[3])
    return out


def test_a_batch_sharded_over_four_devices_equals_one_device():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    done = subprocess.run(
        [sys.executable, "-m", "tests.layers.test_batchnorm"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["autodiff"] <= TOL_DEVICES and out["hand"] <= TOL_DEVICES, out
    # the statistics span the devices: one device's quarter of the batch gives other ones
    assert out["quarter_state"] > 100 * TOL_DEVICES, out


if __name__ == "__main__":
    print(json.dumps(four_devices()))
