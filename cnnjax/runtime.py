"""Process-wide settings that make XLA:CPU fast, applied by the entry points before JAX starts.

Two settings, each measured on the reference CNN's hand-derived training step at batch 128 on a
2-core x86_64 machine (jax 0.10.2; `python -m experiments.benchmark` has the side-by-side run):

1. **Convolutions on XLA's own (Eigen) kernels, not YNNPACK.** jaxlib 0.10 hands convolutions
   to YNNPACK fusions by default; on this network's shapes they were 2-4x slower than XLA's
   Eigen convolutions (profiles of the step: conv1's forward, one input channel, 4.3 vs 1.2
   ms; conv2's kernel gradient 8.0 vs 2.2 ms). The XLA flag
   `--xla_cpu_experimental_ynn_fusion_type=-individual_convolution` takes convolutions out of
   YNNPACK and leaves its dots, reductions and elementwise fusions. Step: 37 -> 22 ms.

2. **Freed memory kept for reuse (glibc malloc).** XLA:CPU allocates each execution's
   buffers with malloc from its worker threads and frees them after. glibc serves blocks above
   its mmap threshold (at most 32 MiB) with fresh mmap pages, and each thread's arena is made
   of mmapped heaps it hands back when they empty, so every step paid a page fault per 4 KiB
   of its activations (1.7 million minor faults in a 10 s run at batch 128). Three mallopt
   settings keep the memory: M_MMAP_MAX 0 (every block from the heap), a 1 GiB
   M_TRIM_THRESHOLD (freed memory stays in the process) and M_ARENA_MAX 1 (one heap for all
   threads; without it batch 512 still faulted 37,000 times a step). tcmalloc, jemalloc and
   PyTorch's CPU allocator keep freed memory the same way. The cost: resident memory stays at
   its peak. Step with setting 1: batch 128 22 -> 12 ms; batch 512 92 ms with the first two
   mallopt settings, 58 ms with all three (each setting alone leaves the other's cost).

Neither changes what is computed, only which kernels run and where buffers live; convolution
kernels round differently, so results agree with an untuned run to float32 rounding, not bit
for bit. A run is a pure function of its config and seed under either setting.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from importlib.metadata import PackageNotFoundError, version

from jax._src import xla_bridge

XLA_CPU_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
FLAG_NAME = XLA_CPU_FLAG.split("=")[0]
# jaxlib releases known to have YNNPACK convolution fusions and this flag (checked: 0.10.0 and
# 0.10.2). XLA aborts on a flag it does not know, so other releases get no flag until checked.
JAXLIB_WITH_FLAG = ((0, 10),)

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # glibc <malloc.h>
KEEP_FREED_BYTES = 1 << 30  # return heap memory to the OS only above 1 GiB free at the top

_before: dict = {}  # environment variables as they were before set_xla_cpu_flag changed them
UNTUNED = "CNNJAX_UNTUNED"  # set (non-empty): the entry points leave these settings off


def wanted() -> bool:
    """Whether the entry points should tune: unless $CNNJAX_UNTUNED is set."""
    return not os.environ.get(UNTUNED)


def _jaxlib_version() -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version("jaxlib").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return (0, 0)


def set_xla_cpu_flag() -> str:
    """Add XLA_CPU_FLAG to $XLA_FLAGS unless the user set the flag. Returns what happened."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "XLA_FLAGS" in _before:  # set by an earlier call in this process
        return "set"
    if FLAG_NAME in flags:
        return "left as the user set it"
    if _jaxlib_version() not in JAXLIB_WITH_FLAG:
        release = ".".join(map(str, _jaxlib_version()))
        return f"not set: jaxlib {release} is not in runtime.JAXLIB_WITH_FLAG"
    if xla_bridge.backends_are_initialized():
        raise RuntimeError(
            "cnnjax.runtime.tune() must run before JAX starts its backends (before the first "
            "array or jax.devices()); call it first thing in main()"
        )
    _before.setdefault("XLA_FLAGS", os.environ.get("XLA_FLAGS"))
    os.environ["XLA_FLAGS"] = f"{flags} {XLA_CPU_FLAG}".strip()
    return "set"


def untuned_environ() -> dict:
    """A copy of os.environ as it was before this process's tune(): for child processes that
    must start without the XLA flag (a benchmark's untuned peers)."""
    env = dict(os.environ)
    for name, value in _before.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def keep_freed_memory() -> str:
    """glibc only: serve large blocks from the heap and keep freed memory for reuse."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return f"not set: needs glibc, this is {platform.system()} {platform.libc_ver()[0]}"
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    ok = all(libc.mallopt(option, value) == 1 for option, value in (
        (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, KEEP_FREED_BYTES), (M_ARENA_MAX, 1)))  # fmt: skip
    return "set" if ok else "not set: mallopt refused"


def tune(*, xla_flag: bool = True, malloc: bool = True) -> dict:
    """Apply the settings above (each can be turned off); returns {setting: what happened}.
    Call before anything starts JAX's backends. Idempotent."""
    done = {}
    if xla_flag:
        done["xla_cpu_flag"] = set_xla_cpu_flag()
    if malloc:
        done["keep_freed_memory"] = keep_freed_memory()
    return done
