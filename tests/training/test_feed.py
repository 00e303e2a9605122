"""cnnjax.training.feed: the split on the devices or streamed from the host gives the same batches,
the same params bit for bit (steps, scans, populations, whole runs), and "auto" picks by size."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from cnnjax import models, parallel
from cnnjax.training import RunError, feed, run, train
from tests.builders import (
    MEMBER_ATOL,
    MEMBER_RTOL,
    SMALL_SPEC,
    config_for,
    member_configs,
    run_steps,
    small_config,
    synthetic,
)
from tests.builders import together as population_steps


def _same_tree(a, b) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_both_feeds_hand_the_step_the_same_batch():
    images, labels = synthetic(n=40)
    mesh = parallel.make_mesh(jax.devices()[:1])
    on_device, on_host = (feed.make(p, (images, labels), mesh) for p in ("device", "host"))
    idx_SB = np.random.default_rng(0).integers(0, 40, (5, 8))
    gather = jax.jit(lambda f, resident, batch: f.gather(resident, batch), static_argnums=0)
    for device_batch, host_batch in zip(
        on_device.batches(idx_SB), on_host.batches(idx_SB), strict=True
    ):
        x_d, y_d = gather(on_device, on_device.resident, device_batch)
        x_h, y_h = gather(on_host, on_host.resident, host_batch)
        assert x_h.dtype == np.uint8 and x_h.shape == (8, 12, 12, 1)
        np.testing.assert_array_equal(x_d, x_h)
        np.testing.assert_array_equal(y_d, y_h)
    assert on_host.resident == () and len(on_device.resident) == 2  # nothing of it on a device


@pytest.mark.parametrize("scan", ["no", "yes"])
def test_streamed_batches_train_to_the_same_params_bit_for_bit(scan):
    images, labels = synthetic(n=128)
    device_state, device_curve = run_steps(small_config("hand", scan=scan), images, labels, 2)
    host_state, host_curve = run_steps(
        small_config("hand", scan=scan), images, labels, 2, placement="host"
    )
    np.testing.assert_array_equal(host_curve, device_curve)
    _same_tree(host_state, device_state)


@pytest.mark.parametrize("layout", ["unroll", "vmap"])
def test_a_streamed_population_trains_to_the_same_params(layout):
    """Bit for bit where each member is its own convolution ("unroll", and "sequential", which
    is its one-member case); "vmap" makes one grouped convolution whose XLA:CPU kernel sums in
    an order that depends on where its operand comes from: 1 ulp apart here, so the members'
    float tolerance of tests/sweeps/test_population.py."""
    images, labels = synthetic(n=64)
    on_device, _ = population_steps(member_configs(), images, labels, layout)
    on_host, _ = population_steps(member_configs(), images, labels, layout, placement="host")
    if layout == "unroll":
        _same_tree(on_host, on_device)
    for a, b in zip(jax.tree.leaves(on_host), jax.tree.leaves(on_device), strict=True):
        np.testing.assert_allclose(a, b, rtol=MEMBER_RTOL, atol=MEMBER_ATOL)


@pytest.mark.parametrize("flip", [False, True])
def test_streamed_evaluation_equals_the_one_program_evaluation(flip):
    images, labels = synthetic(n=50)  # 50 = 3 batches of 16 and a padded one
    params = models.init(jax.random.key(0), SMALL_SPEC, (12, 12, 1))
    mesh = parallel.make_mesh(jax.devices()[:1])
    fed = {p: feed.make(p, (images, labels), mesh) for p in ("host", "device")}
    got, want = (
        train.evaluate_fed(params, fed[p], spec=SMALL_SPEC, batch_size=16, flip=flip)
        for p in ("host", "device")
    )
    np.testing.assert_array_equal(got["predictions"], want["predictions"])
    assert float(got["accuracy"]) == float(want["accuracy"])
    assert float(got["loss"]) == pytest.approx(float(want["loss"]), rel=1e-6)  # summed apart


def test_auto_placement_by_size(monkeypatch):
    mesh = parallel.make_mesh(jax.devices()[:1])
    monkeypatch.setattr(feed, "device_memory", lambda mesh: 1000)
    assert feed.resolve_placement("auto", 250, mesh) == "device"  # DEVICE_SHARE = 1/4
    assert feed.resolve_placement("auto", 251, mesh) == "host"
    assert feed.resolve_placement("host", 1, mesh) == "host"
    assert feed.resolve_placement("device", 10**12, mesh) == "device"
    with pytest.raises(ValueError, match=r"data\.placement must be one of"):
        feed.resolve_placement("disk", 1, mesh)
    monkeypatch.undo()
    assert feed.device_memory(mesh) > 2**20  # the CPU: the host's available memory


def test_scan_auto_is_the_loop_on_the_cpu():
    assert jax.default_backend() == "cpu"
    assert not train.uses_scan(small_config(scan="auto"))
    assert train.uses_scan(small_config(scan="yes"))
    with pytest.raises(ValueError, match=r"train\.scan must be one of"):
        train.uses_scan(small_config(scan="True"))


@pytest.mark.slow
def test_a_streamed_run_ends_with_the_device_runs_params_hash(dataset, tmp_path):
    on_device = run.fit(config_for(dataset, epochs=1), tmp_path / "device")
    config = config_for(dataset, epochs=1)
    config.data.placement = "host"
    on_host = run.fit(config, tmp_path / "host")
    assert on_host["params_hash"] == on_device["params_hash"]
    assert on_host["test_accuracy"] == on_device["test_accuracy"]
    assert on_host["environment"]["data_placement"] == "host"
    assert on_device["environment"]["data_placement"] == "device"  # "auto" on a CPU


def test_a_bad_placement_is_refused_before_any_work(dataset, tmp_path):
    config = config_for(dataset, epochs=1)
    config.data.placement = "disk"
    with pytest.raises(RunError, match=r"config\.data\.placement must be one of"):
        run.fit(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
