"""cnnjax.parallel on this process's devices: the mesh, shardings, placed arrays, the refusal of
a batch that does not split, and start-up without a coordinator."""

import types

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from cnnjax import parallel


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
