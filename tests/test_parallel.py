"""cnnjax.parallel: data parallel training; meshes and shardings here (one device); in a subprocess
with 4 CPU devices (--xla_force_host_platform_device_count=4, which must be set before jax starts),
steps and a short run equal one device's within a float tolerance; two processes on localhost train
one run together and end with one process's params.

This file is also the 4-device worker: `python -m tests.test_parallel DATA_DIRS WORKDIR` runs
the 4-device half and prints its measurements as one JSON line.
"""

import json
import os
import socket
import subprocess
import sys
import types
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from cnnjax import parallel
from cnnjax.output import jsonl
from cnnjax.sweeps import population
from cnnjax.training import RunError, feed, run, train
from tests.builders import (
    REPO,
    SMALL_SPEC,
    config_for,
    member_configs,
    small_config,
    synthetic,
    train_command,
)

# Params after N devices' steps vs one device's, as max|a - b| / max|b| per leaf. Each step's
# gradient is a batch mean that N devices sum in another order (N partial sums, then an
# all-reduce): a few float32 eps (1.2e-7) of difference per step, which later steps carry and
# amplify (each update depends on the params it updates). Measured here after 32 steps: 2.9e-6
# on 4 devices (conv2/kernel), 3.1e-7 on 2 processes; after 8 steps 1.7e-7. 1e-4 (~800 eps,
# as for the project's other float32 sums in another order) leaves a 30x margin. A real fault
# moves params by O(learning rate x gradient), ~1e-2 of their scale or more: the planted one
# below (every device trains on the first device's examples) measures 6e-1.
PARAMS_RTOL = 1e-4
WORKER_TIMEOUT_S = 240
CPU = {"JAX_PLATFORMS": "cpu"}  # the subprocesses' devices, wherever the tests run


def _max_rel_diff(tree, reference) -> float:
    pairs = zip(jax.tree.leaves(tree), jax.tree.leaves(reference), strict=True)
    return max(
        float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())
        for a, b in pairs
    )


def _final_params(workdir):
    return run.last_checkpoint(Path(workdir))[2].params


# ------------------------------------------------------------------------------ one device


def test_the_mesh_has_one_batch_axis_over_every_device():
    mesh = parallel.make_mesh()
    assert mesh.axis_names == ("batch",) and mesh.size == jax.device_count()
    assert list(mesh.devices.flat) == jax.devices()
    assert parallel.make_mesh(jax.devices()[:1]).size == 1


def test_shardings_split_the_named_dimension_only():
    mesh = parallel.make_mesh()
    assert parallel.replicated(mesh).spec == PartitionSpec()
    assert parallel.batch_sharding(mesh, 1, 0).spec == PartitionSpec("batch")
    assert parallel.batch_sharding(mesh, 2, 1).spec == PartitionSpec(None, "batch")
    with pytest.raises(ValueError, match=r"axis must be in \[0, 2\)"):
        parallel.batch_sharding(mesh, 2, 2)


def test_placed_arrays_keep_their_values_and_dtypes():
    mesh = parallel.make_mesh()
    idx_SB = np.arange(24, dtype=np.int32).reshape(3, 8)
    placed = parallel.put_sharded(idx_SB, mesh, axis=1)
    assert placed.dtype == np.int32 and placed.sharding.spec == PartitionSpec(None, "batch")
    np.testing.assert_array_equal(np.asarray(placed), idx_SB)
    tree = {"w": np.ones((2, 3), np.float32), "step": jax.numpy.zeros((), jax.numpy.int32)}
    placed = parallel.put_replicated(tree, mesh)
    assert all(leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(placed))
    assert jax.tree.map(lambda a: (a.shape, a.dtype), placed) == jax.tree.map(
        lambda a: (a.shape, a.dtype), tree
    )


def test_a_batch_that_does_not_split_evenly_is_refused_with_the_fix():
    four = types.SimpleNamespace(size=4)  # check_divisible reads only the device count
    parallel.check_divisible(32, four)
    with pytest.raises(ValueError, match=r"30 does not split evenly over 4 devices.*28 or 32"):
        parallel.check_divisible(30, four)
    with pytest.raises(ValueError, match=r"multiple of 4 \(e\.g\. 4 or 4\)"):
        parallel.check_divisible(3, four)


def test_initialize_without_a_coordinator_is_one_process(monkeypatch):
    def must_not_start(*args, **kwargs):
        raise AssertionError(f"jax.distributed.initialize{args} was called")

    monkeypatch.setattr(jax.distributed, "initialize", must_not_start)
    for name in parallel.ENV.values():
        monkeypatch.delenv(name, raising=False)
    assert parallel.initialize() is False and parallel.initialize("", 1, 0) is False
    assert parallel.is_primary() and not jax.distributed.is_initialized()
    monkeypatch.setenv("CNNJAX_NUM_PROCESSES", "2")
    with pytest.raises(ValueError, match="2 processes need a coordinator: pass --coordinator"):
        parallel.initialize()
    with pytest.raises(ValueError, match=r"\(0 \.\. N-1\) on every process, got 2 and 2"):
        parallel.initialize("localhost:1", process_id=2)  # 2 processes from the environment
    monkeypatch.setenv("CNNJAX_PROCESS_ID", "one")
    with pytest.raises(ValueError, match=r"\$CNNJAX_PROCESS_ID must be an integer, got 'one'"):
        parallel.initialize("localhost:1")
    monkeypatch.delenv("CNNJAX_NUM_PROCESSES")
    with pytest.raises(ValueError, match=r"needs --num_processes .* got None and 0"):
        parallel.initialize("localhost:1", None, 0)


# ------------------------------------------------------------------------------ four devices


class FirstDeviceEverywhere(feed.DeviceFeed):
    """A planted fault: every device trains on the first device's quarter of each batch."""

    def batch(self, idx, axis: int = 0):
        quarter = np.take(idx, range(idx.shape[axis] // 4), axis=axis)
        return super().batch(np.concatenate([quarter] * 4, axis=axis), axis)


def _steps_on(devices, config, feed_class=None, steps=8, placement="device"):
    """Params after `steps` steps of SMALL_SPEC on synthetic data on a mesh of `devices`."""
    images, labels = synthetic(n=steps * config.train.batch_size)
    mesh = parallel.make_mesh(devices)
    optimizer = train.make_optimizer(config.optim, steps, 1)
    state = train.init_state(config.seed, SMALL_SPEC, images.shape[1:], optimizer)
    state = parallel.put_replicated(state, mesh)
    if feed_class is None:
        data = feed.make(placement, (images, labels), mesh)
    else:
        data = feed_class((images, labels), mesh)
    run_steps = train.make_train_steps(SMALL_SPEC, optimizer, config, data)
    idx_SB = np.asarray(train.epoch_indices(state, 0, images.shape[0], config.train.batch_size))
    state, _ = run_steps(state, idx_SB)
    replicated = all(leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(state))
    return state.params, replicated, mesh


def _population_on(devices, layout, steps=4, placement="device"):
    """Members' params after `steps` steps of a 2-member population (cnnjax.sweeps.population) whose
    batches are split over a mesh of `devices`, as a sweep runs them."""
    configs = member_configs()[:2]
    batch = configs[0].train.batch_size
    images, labels = synthetic(n=steps * batch)
    mesh = parallel.make_mesh(devices)
    data = feed.make(placement, (images, labels), mesh)
    pop = parallel.put_replicated(
        population.init(configs, SMALL_SPEC, images.shape[1:], steps), mesh
    )
    step = population.make_step(SMALL_SPEC, configs[0], steps, layout, data)
    idx_MSB = np.asarray(population.epoch_indices(pop, 0, images.shape[0], batch))
    for batch_M in data.batches(idx_MSB.transpose(1, 0, 2), axis=1):
        pop, _ = step(pop, data.resident, batch_M)
    return pop.state.params


def four_devices(source_dir, tfds_dir, workdir) -> dict:
    """The 4-device half: steps and a short run on 4 devices, and a refused batch of 30."""
    assert jax.device_count() == 4, jax.devices()
    out, one_device = {}, {}
    cases = {
        "hand": (small_config("hand"), "device"),
        "autodiff": (small_config(), "device"),
        "scan": (small_config("hand", scan="yes"), "device"),
        "hand_host": (small_config("hand"), "host"),
        "scan_host": (small_config("hand", scan="yes"), "host"),
    }
    for name, (config, placement) in cases.items():
        one_device[name], _, _ = _steps_on(jax.devices()[:1], config)
        four, replicated, mesh = _steps_on(jax.devices(), config, placement=placement)
        out[name] = {"rel_diff": _max_rel_diff(four, one_device[name]), "replicated": replicated}
    for layout, placement in (("unroll", "device"), ("vmap", "device"), ("vmap", "host")):
        out[f"population_{layout}_{placement}"] = _max_rel_diff(
            _population_on(jax.devices(), layout, placement=placement),
            _population_on(jax.devices()[:1], layout),
        )
    placed = parallel.put_sharded(np.arange(16), mesh, axis=0)
    out["shard_shapes"] = [s.data.shape for s in placed.addressable_shards]
    gathered = parallel.put_gathered(np.arange(40).reshape(20, 2), np.arange(16), mesh, axis=0)
    out["gathered_shard_shapes"] = [s.data.shape for s in gathered.addressable_shards]
    planted, _, _ = _steps_on(jax.devices(), small_config("hand"), FirstDeviceEverywhere)
    out["planted_rel_diff"] = _max_rel_diff(planted, one_device["hand"])
    out["summary"] = run.fit(config_for((source_dir, tfds_dir), epochs=1), workdir)
    try:
        run.fit(config_for((source_dir, tfds_dir), epochs=1, batch_size=30), f"{workdir}_30")
    except RunError as error:
        out["batch_30"] = str(error)
    out["batch_30_wrote"] = os.path.exists(f"{workdir}_30")
    return out


@pytest.fixture(scope="module")
def one_device_run(dataset, tmp_path_factory):
    """The reference: the tiny config for one epoch (32 steps of 32) in this process."""
    assert jax.device_count() == 1, "run the tests without --xla_force_host_platform_device_count"
    workdir = tmp_path_factory.mktemp("one_device") / "run"
    run.fit(config_for(dataset, epochs=1), workdir)
    return workdir


def test_four_devices_train_like_one(dataset, one_device_run, tmp_path):
    worker = ["-m", "tests.test_parallel", *map(str, dataset), str(tmp_path / "run")]
    env = {**os.environ, **CPU, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    done = subprocess.run(
        [sys.executable, *worker],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    steps = ("hand", "autodiff", "scan", "hand_host", "scan_host")  # "_host": streamed batches
    for name in steps:
        assert out[name]["rel_diff"] <= PARAMS_RTOL, (name, out[name])
        assert out[name]["replicated"], name  # params and optimizer state stay replicated
    populations = [k for k in out if k.startswith("population_")]
    for name in populations:  # a sweep's members, each data parallel over 4 devices
        assert out[name] <= PARAMS_RTOL, (name, out)
    # each device holds a quarter of the batch, streamed ones too
    assert out["shard_shapes"] == [[4]] * 4 and out["gathered_shard_shapes"] == [[4, 2]] * 4
    assert out["planted_rel_diff"] > 100 * PARAMS_RTOL  # the tolerance sees a real fault
    rel_diff = _max_rel_diff(_final_params(tmp_path / "run"), _final_params(one_device_run))
    print(f"1 vs 4 devices, populations: {[f'{out[n]:.2e}' for n in populations]}")
    print(
        f"1 vs 4 devices, steps: {[out[n]['rel_diff'] for n in steps]}, "
        f"one epoch: {rel_diff:.2e}, planted fault: {out['planted_rel_diff']:.2e}"
    )
    assert rel_diff <= PARAMS_RTOL
    summary = json.loads((one_device_run / "summary.json").read_text())
    assert out["summary"]["test_accuracy"] == pytest.approx(summary["test_accuracy"], abs=0.01)
    assert "batch_size: a batch of 30 does not split evenly over 4 devices" in out["batch_30"]
    assert "--config.train.batch_size" in out["batch_30"] and not out["batch_30_wrote"]


# ------------------------------------------------------------------------------ two processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _train_together(dataset, workdir, *extra):
    """`python -m experiments.train` as two processes of one run; their outputs."""
    coordinator = f"localhost:{_free_port()}"
    command = train_command(dataset, workdir, 1, *extra)
    env = {**os.environ, **CPU, "CNNJAX_COORDINATOR": coordinator, "CNNJAX_NUM_PROCESSES": "2"}
    workers = [
        subprocess.Popen(
            [*command, f"--process_id={i}"],
            cwd=REPO,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    try:
        outputs = [w.communicate(timeout=WORKER_TIMEOUT_S)[0] for w in workers]
    finally:
        for w in workers:
            w.kill()
    for w, output in zip(workers, outputs, strict=True):
        assert w.returncode == 0, output
    return outputs


def test_two_processes_train_one_run_together_like_one(dataset, one_device_run, tmp_path):
    workdir = tmp_path / "run"
    first, second = _train_together(dataset, workdir)
    assert "process 0 of 2: 1 of 2 cpu devices" in first and "params_hash" in first
    assert "process 1 of 2: 1 of 2 cpu devices" in second and "params_hash" not in second
    steps = [r for r in jsonl.read_metrics(workdir / "metrics.jsonl") if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, 33))  # one writer: process 0
    rel_diff = _max_rel_diff(_final_params(workdir), _final_params(one_device_run))
    print(f"1 vs 2 processes: {rel_diff:.2e}")
    assert rel_diff <= PARAMS_RTOL
    # Both processes restore the finished run's checkpoint and re-evaluate it: bit for bit.
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["params_hash"] in first
    (workdir / "summary.json").unlink()
    _train_together(dataset, workdir, "--resume")
    again = json.loads((workdir / "summary.json").read_text())
    assert again["params_hash"] == summary["params_hash"]
    assert again["test_accuracy"] == summary["test_accuracy"]


if __name__ == "__main__":
    print(json.dumps(four_devices(*sys.argv[1:4])))
