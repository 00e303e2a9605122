"""How a split's batches reach the devices: the whole split kept on every device, or streamed
from host memory a few steps ahead.

Placements (config.data.placement):
  "device"  the uint8 split replicated on every device of the mesh; a step gathers its batch
            there (jnp.take inside the jitted step): no host work per step, but every device
            holds the whole split.
  "host"    the split stays in host memory; each step's batch is gathered on the host, each
            device receiving only its slice of it (sharded over the mesh), PREFETCH steps
            ahead of the step that needs it. A device holds a few batches, and each process
            gathers only its own devices' rows, so splits of any size train, and more devices
            add capacity.
  "auto"    "device" when the splits take at most DEVICE_SHARE of the smallest device's memory
            (on the CPU, all devices together of the host's available memory), else "host".
Both hand the step the same uint8 batch, so a run's params are bit for bit the same whichever
placement it uses (tests/training/test_feed.py).

A feed serves a jitted step in two parts: `resident` (arrays that stay put, an argument of every
call) and `batch(idx, axis)` (what one call needs for the examples idx, split over the mesh along
`axis`); inside the step `gather(resident, batch)` gives (x_BHWC uint8, labels_B). Legend: idx_B
one step's example indices, idx_SB S steps', idx_MB one step's of M population members.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import parallel

PLACEMENTS = ("auto", "device", "host")
DEVICE_SHARE = 0.25  # the most of a device's memory the splits may take on "auto"
PREFETCH = 2  # batches gathered and sent ahead of the step on "host"


class DeviceFeed:
    """The split `(images_NHWC, labels_N)` (host arrays) replicated on every device of `mesh`."""

    placement = "device"

    def __init__(self, split, mesh):
        self.split, self.mesh = tuple(np.asarray(a) for a in split), mesh
        self.resident = parallel.put_replicated(self.split, mesh)

    def batch(self, idx, axis: int = 0):
        """The indices themselves, split over the mesh along `axis`."""
        return parallel.put_sharded(idx, self.mesh, axis)

    @staticmethod
    def gather(resident, batch):
        images_NHWC, labels_N = resident
        return jnp.take(images_NHWC, batch, axis=0), jnp.take(labels_N, batch, axis=0)

    def abstract_batch(self, idx_shape):
        return jax.ShapeDtypeStruct(idx_shape, jnp.int32)

    def batches(self, idx_S, axis: int = 0):
        """batch(idx_S[s], axis) for each s, in order."""
        return (self.batch(idx, axis) for idx in idx_S)


class HostFeed:
    """The split in host memory; each batch gathered there and sent ahead (module docstring)."""

    placement = "host"

    def __init__(self, split, mesh, prefetch: int = PREFETCH):
        self.split, self.mesh, self.prefetch = tuple(np.asarray(a) for a in split), mesh, prefetch
        self.resident = ()

    def batch(self, idx, axis: int = 0):
        """(x uint8, labels) of the examples idx, each device's slice gathered on the host."""
        return tuple(parallel.put_gathered(a, idx, self.mesh, axis) for a in self.split)

    @staticmethod
    def gather(resident, batch):
        return batch

    def abstract_batch(self, idx_shape):
        images, labels = self.split
        return (
            jax.ShapeDtypeStruct(idx_shape + images.shape[1:], images.dtype),
            jax.ShapeDtypeStruct(idx_shape, labels.dtype),
        )

    def batches(self, idx_S, axis: int = 0):
        """batch(idx_S[s], axis) for each s, gathered by a worker thread `prefetch` ahead."""
        with concurrent.futures.ThreadPoolExecutor(1) as worker:
            ahead = collections.deque()
            for idx in idx_S:
                ahead.append(worker.submit(self.batch, idx, axis))
                if len(ahead) > self.prefetch:
                    yield ahead.popleft().result()
            while ahead:
                yield ahead.popleft().result()


def device_memory(mesh) -> int:
    """Bytes one device of `mesh` can hold: the smallest allocator limit among this process's
    devices; on the CPU (no limit reported), the host's available memory shared by them."""
    local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    limits = [(d.memory_stats() or {}).get("bytes_limit") for d in local]
    if local and all(limits):
        return int(min(limits))
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // max(len(local), 1)


def resolve_placement(placement: str, nbytes: int, mesh) -> str:
    """ "auto" -> "device" if `nbytes` (the splits) fit in DEVICE_SHARE of device_memory, else
    "host"; "device" and "host" stay; anything else is an error naming the field."""
    if placement not in PLACEMENTS:
        raise ValueError(f"data.placement must be one of {PLACEMENTS}, got {placement!r}")
    if placement != "auto":
        return placement
    return "device" if nbytes <= DEVICE_SHARE * device_memory(mesh) else "host"


def make(placement: str, split, mesh) -> DeviceFeed | HostFeed:
    """A feed of `split` on `mesh`: a DeviceFeed or a HostFeed (placement resolved already)."""
    return {"device": DeviceFeed, "host": HostFeed}[placement](split, mesh)


def nbytes(*splits) -> int:
    return sum(int(np.asarray(a).nbytes) for split in splits for a in split)
