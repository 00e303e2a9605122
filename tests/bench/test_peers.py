"""cnnjax.bench.peers: each idiomatic loop trains, and from cnnjax's params computes cnnjax's
numbers."""

from __future__ import annotations

import importlib.util

import jax
import numpy as np
import pytest

from cnnjax import models
from cnnjax.bench import peers
from cnnjax.training import train

SPEC, SHAPE = models.REFERENCE_CNN, models.REFERENCE_INPUT_SHAPE
LR, MOMENTUM = 0.05, 0.9

# float32 eps is 1.2e-7. The frameworks run the same math with other kernels (XLA vs oneDNN) and
# so sum in other orders; the longest sum is dense1's 1600 terms, ~sqrt(1600) eps ~ 5e-6 of the
# scale. 2e-5 of the largest |value| leaves headroom; a wrong layout (HWIO read as OIHW, dense1's
# rows in H, W, C order for PyTorch's C, H, W flatten) is off by ~1e-1 of the scale.
RTOL = 2e-5
# Three SGD steps compound those differences a little (the updates are lr * momentum sums of
# gradients that differ by ~RTOL); 1e-4 of the loss still tells a different optimizer (e.g. no
# momentum, or Nesterov) apart, which moves the third loss by ~1e-2.
STEPS_RTOL = 1e-4

needs_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None,
    reason="torch not installed: pip install -e .[torch]",
)


def _batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    x_BHWC = rng.integers(0, 256, (n, *SHAPE), np.uint8)
    return x_BHWC, rng.integers(0, 10, n).astype(np.int32)


def _params():
    return models.init(jax.random.key(0), SPEC, SHAPE)


def _make(name, params):
    if name == "nnx":
        return peers.nnx_peer(params, SPEC, SHAPE, learning_rate=LR, momentum=MOMENTUM)
    if name == "linen":
        return peers.linen_peer(params, SPEC, learning_rate=LR, momentum=MOMENTUM)
    compile = name == "torch.compile"
    return peers.torch_peer(params, SPEC, learning_rate=LR, momentum=MOMENTUM, compile=compile)


def _losses(peer, x_BHWC, labels_B, steps):
    batch = peer.batch(x_BHWC, labels_B)
    return [float(peer.wait(peer.step(batch))) for _ in range(steps)]


PEERS = [
    "nnx",
    "linen",
    pytest.param("torch", marks=needs_torch),
    pytest.param("torch.compile", marks=[needs_torch, pytest.mark.slow]),
]


@pytest.mark.parametrize("name", PEERS)
def test_a_peer_learns_a_small_batch(name):
    """16 random images with random labels: 225k params memorise them within 20 steps."""
    losses = _losses(_make(name, _params()), *_batch(), steps=20)
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("name", ["nnx", "linen", pytest.param("torch", marks=needs_torch)])
def test_a_peer_from_cnnjax_params_computes_cnnjax_loss_and_logits(name):
    params, (x_BHWC, labels_B) = _params(), _batch()
    x = train.to_float(x_BHWC)
    want_loss = float(models.loss(params, x, labels_B, SPEC))
    want_logits = np.asarray(models.batch_logits(params, x, SPEC))
    peer = _make(name, params)
    batch = peer.batch(x_BHWC, labels_B)
    logits = peer.wait(peer.logits(batch))
    assert logits.shape == want_logits.shape
    assert np.max(np.abs(logits - want_logits)) <= RTOL * np.max(np.abs(want_logits))
    assert float(peer.wait(peer.step(batch))) == pytest.approx(want_loss, rel=RTOL)


@needs_torch
def test_all_peers_take_the_same_sgd_momentum_steps():
    params, batch = _params(), _batch()
    runs = {
        name: _losses(_make(name, params), *batch, steps=3) for name in ("nnx", "linen", "torch")
    }
    for name in ("linen", "torch"):
        np.testing.assert_allclose(runs[name], runs["nnx"], rtol=STEPS_RTOL, err_msg=name)
    # the check tells optimizers apart: plain SGD (no momentum) from the same start
    plain = _losses(peers.nnx_peer(params, SPEC, SHAPE, learning_rate=LR, momentum=0.0), *batch, 3)
    assert abs(plain[-1] - runs["nnx"][-1]) > STEPS_RTOL * runs["nnx"][-1]


@needs_torch
def test_torch_weights_convert_and_a_planted_flatten_order_is_caught():
    import torch

    params, (x_BHWC, _) = _params(), _batch(4)
    state = peers.to_torch_state(params)
    conv2_HWIO = np.asarray(params["conv2"]["kernel"])
    np.testing.assert_array_equal(state["conv2.weight"], conv2_HWIO.transpose(3, 2, 0, 1))
    want = np.asarray(models.batch_logits(params, train.to_float(x_BHWC), SPEC))
    model = peers.torch_model(params)
    x_BCHW = torch.from_numpy(np.asarray(train.to_float(x_BHWC)).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        assert np.max(np.abs(model(x_BCHW).numpy() - want)) <= RTOL * np.max(np.abs(want))
        # dense1 transposed but its rows left in cnnjax's H, W, C order
        model.dense1.weight.copy_(torch.tensor(np.asarray(params["dense1"]["kernel"]).T))
        planted = model(x_BCHW).numpy()
    assert np.max(np.abs(planted - want)) > 100 * RTOL * np.max(np.abs(want))


def test_the_torch_peer_is_for_the_reference_network_only():
    with pytest.raises(ValueError, match="REFERENCE_CNN"):
        peers.torch_peer({}, (models.Flatten(), models.Dense(3)), learning_rate=LR, momentum=0.9)
