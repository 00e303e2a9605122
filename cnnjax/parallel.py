"""Device mesh, shardings, jax.distributed start-up.

Data parallelism through JAX's own runtime: a 1-D `jax.sharding.Mesh` over every device of every
process, with one axis named "batch". Params and optimizer state are replicated on all of it;
each step's example indices are split along "batch", so each device gathers, augments and
differentiates its slice of the batch, and `jax.jit` (GSPMD) adds the all-reduce that the
gradient's batch mean needs. One device is a 1-device mesh: the same code path.

Several processes (one per host, or one per device) first call `initialize`. Every process
then computes the same global values (the same seed, the same permutation) and `put_replicated`
/ `put_sharded` hand each process's devices only their part of them, so the arrays are global:
one jitted step runs on all devices of all processes together. Legend: idx_B the example
indices of one step, B the global batch.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

AXIS = "batch"
# Environment variables that stand in for initialize's arguments when those are None.
ENV = {
    "coordinator": "CNNJAX_COORDINATOR",
    "num_processes": "CNNJAX_NUM_PROCESSES",
    "process_id": "CNNJAX_PROCESS_ID",
}


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh with the axis "batch".

    Args:
      devices: a sequence of devices; None: `jax.devices()`, every device of every process.
    Returns:
      The Mesh (GSPMD's automatic axis type: jit decides where to communicate).
    """
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding that puts a whole copy of an array on every device of `mesh`."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, ndim: int, axis: int) -> NamedSharding:
    """The sharding that splits dimension `axis` of an `ndim`-dimensional array over "batch"
    (device i of the mesh holds the i-th of mesh.size equal slices) and keeps the rest whole."""
    if not 0 <= axis < ndim:
        raise ValueError(f"axis must be in [0, {ndim}) for a {ndim}-d array, got {axis}")
    return NamedSharding(mesh, PartitionSpec(*(AXIS if d == axis else None for d in range(ndim))))


def put_replicated(tree, mesh: Mesh):
    """Global arrays, replicated on every device of `mesh`, from host values.

    Args:
      tree: a pytree of numpy or jax arrays (or scalars); with several processes, every process
        must pass the same values (each copies them onto its own devices only).
    Returns:
      The same pytree of `jax.Array`s with the `replicated(mesh)` sharding, dtypes unchanged.
    """
    sharding = replicated(mesh)

    def put(leaf):
        host = np.asarray(jax.device_get(leaf))
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


def put_sharded(array, mesh: Mesh, axis: int):
    """A global array whose dimension `axis` is split over the devices of `mesh`.

    Args:
      array: the whole (global) value as a numpy or jax array; with several processes, every
        process passes the same value and copies only its own devices' slices of it.
      mesh: the mesh; array.shape[axis] must be divisible by mesh.size (`check_divisible`).
      axis: the dimension to split, e.g. 0 for idx_B, 1 for idx_SB.
    Returns:
      A `jax.Array` of array's shape and dtype with the `batch_sharding(mesh, ndim, axis)`.
    """
    host = np.asarray(jax.device_get(array))
    check_divisible(host.shape[axis], mesh)
    sharding = batch_sharding(mesh, host.ndim, axis)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def put_gathered(array_N, idx, mesh: Mesh, axis: int):
    """array_N[idx] as a global array whose dimension `axis` (of idx) is split over `mesh`, each
    device's slice gathered from the host array by itself: a process gathers only the rows its
    own devices hold, and no device ever holds array_N.

    Args:
      array_N: a host (numpy) array, e.g. a whole split's images_NHWC.
      idx: integer indices into its first dimension, e.g. idx_B or idx_SB (every process passes
        the same); idx.shape[axis] must be divisible by mesh.size.
      axis: the dimension of idx to split, e.g. 0 for idx_B, 1 for idx_SB.
    Returns:
      A `jax.Array` of shape idx.shape + array_N.shape[1:] and array_N's dtype.
    """
    idx = np.asarray(idx)
    check_divisible(idx.shape[axis], mesh)
    shape = idx.shape + array_N.shape[1:]
    sharding = batch_sharding(mesh, len(shape), axis)
    return jax.make_array_from_callback(
        shape, sharding, lambda index: array_N[idx[index[: idx.ndim]]][(..., *index[idx.ndim :])]
    )


def check_divisible(batch_size: int, mesh: Mesh) -> None:
    """Raise a ValueError unless `batch_size` splits evenly over the devices of `mesh`."""
    if batch_size % mesh.size:
        below, above = batch_size // mesh.size * mesh.size, -(-batch_size // mesh.size) * mesh.size
        raise ValueError(
            f"a batch of {batch_size} does not split evenly over {mesh.size} devices; use a "
            f"multiple of {mesh.size} (e.g. {below or above} or {above})"
        )


def initialize(coordinator=None, num_processes=None, process_id=None) -> bool:
    """Join the processes of one run with `jax.distributed.initialize`; call it before anything
    else touches jax's devices. Idempotent.

    Args:
      coordinator: "host:port" of process 0 (every process passes the same), "auto" to let
        jax detect the cluster (SLURM, Open MPI, TPU pods; on GPUs jax then gives each process
        the one GPU numbered by its local rank, so start one process per GPU), or "" for a
        single process. None (each argument): $CNNJAX_COORDINATOR, $CNNJAX_NUM_PROCESSES,
        $CNNJAX_PROCESS_ID.
      num_processes: how many processes; required with a "host:port" coordinator.
      process_id: this process's index in [0, num_processes); required likewise.
    Returns:
      Whether jax.distributed is running (False: a single process, nothing started).
    """
    if jax.distributed.is_initialized():
        return True
    coordinator = _from_env(coordinator, "coordinator", str)
    num_processes = _from_env(num_processes, "num_processes", int)
    process_id = _from_env(process_id, "process_id", int)
    if not coordinator:
        if num_processes not in (None, 1):
            raise ValueError(
                f"{num_processes} processes need a coordinator: pass --coordinator=HOST:PORT "
                f"(process 0's address) or --coordinator=auto, or set ${ENV['coordinator']}"
            )
        return False
    if coordinator != "auto" and (
        num_processes is None or process_id is None or not 0 <= process_id < num_processes
    ):
        raise ValueError(
            f"coordinator {coordinator!r} needs --num_processes (N >= 1) and --process_id "
            f"(0 .. N-1) on every process, got {num_processes} and {process_id}"
        )
    # CPU devices of different processes exchange data through gloo (already jax 0.10.2's
    # default; set here so that a multi-process CPU run never finds collectives missing).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator == "auto":  # jax reads the cluster's own variables (SLURM_*, OMPI_*, TPU)
        coordinator = None
    jax.distributed.initialize(coordinator, num_processes, process_id)
    return True


def _from_env(value, name, kind):
    if value is not None:
        return value
    text = os.environ.get(ENV[name], "")
    try:
        return kind(text) if text else None
    except ValueError:
        raise ValueError(f"${ENV[name]} must be an integer, got {text!r}") from None


def is_primary() -> bool:
    """Whether this is process 0, the one that writes a run's files."""
    return jax.process_index() == 0


def describe() -> str:
    """This process's place in the run, for its log: 'process 1 of 2: 2 of 4 cpu devices'."""
    return (
        f"process {jax.process_index()} of {jax.process_count()}: "
        f"{jax.local_device_count()} of {jax.device_count()} {jax.default_backend()} devices"
    )


def barrier(name: str) -> None:
    """Wait until every process has reached the barrier `name` (nothing with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
