"""The process: settings applied before JAX starts (every entry point calls `tune`, unless
$CNNJAX_UNTUNED is set), and a record of what a run ran on (`environment`).

What applies depends on where the work will run, known before JAX starts (`planned_platform`):
$JAX_PLATFORMS if set, else the CPU when no accelerator plugin is installed. With a plugin
installed and $JAX_PLATFORMS unset, JAX itself picks at start-up (the accelerator if it finds
one), so the CPU settings stay off: set JAX_PLATFORMS=cpu to have them on such a machine.

On the CPU, two settings, each measured on the reference CNN's hand-derived training step at
batch 128 on a 2-core x86_64 machine (jax 0.10.2; `python -m experiments.benchmark` has the
side-by-side run):

1. **Convolutions on XLA's own (Eigen) kernels, not YNNPACK.** jaxlib >= 0.10 hands
   convolutions to YNNPACK fusions by default; on this network's shapes they were 2-4x slower
   than XLA's Eigen convolutions (profiles of the step: conv1's forward, one input channel, 4.3
   vs 1.2 ms; conv2's kernel gradient 8.0 vs 2.2 ms). The XLA flag
   `--xla_cpu_experimental_ynn_fusion_type=-individual_convolution` takes convolutions out of
   YNNPACK and leaves its dots, reductions and elementwise fusions. Step: 37 -> 22 ms (on
   jaxlib 0.12, whose YNNPACK is faster, a traced step 60 -> 47-50 ms on a loaded machine). XLA
   aborts the process on a flag it does not know, so the flag is set only when the installed
   XLA registers it (`xla_knows`, which reads the XLA libraries without loading them).

2. **Freed memory kept for reuse (glibc malloc).** XLA:CPU allocates each execution's
   buffers with malloc from its worker threads and frees them after. glibc serves blocks above
   its mmap threshold (at most 32 MiB) with fresh mmap pages, and each thread's arena is made
   of mmapped heaps it hands back when they empty, so every step paid a page fault per 4 KiB
   of its activations (1.7 million minor faults in a 10 s run at batch 128). Three mallopt
   settings keep the memory: M_MMAP_MAX 0 (every block from the heap), a 1 GiB
   M_TRIM_THRESHOLD (freed memory stays in the process) and M_ARENA_MAX 1 (one heap for all
   threads; without it batch 512 still faulted 37,000 times a step). The cost: resident memory
   stays at its peak. Step with setting 1: batch 128 22 -> 12 ms; batch 512 92 -> 58 ms.

Neither changes what is computed, only which kernels run and where buffers live; convolution
kernels round differently, so results agree with an untuned run to float32 rounding, not bit
for bit.

On a GPU, `deterministic=True` (a run's config.train.deterministic, on by default) adds
`--xla_gpu_deterministic_ops=true`: XLA then picks deterministic algorithms (scatter-adds and
some reductions without atomics, cuDNN convolutions chosen without autotuning noise), so a
config and seed give the same params hash on every rerun and resume, as they do on the CPU.
The cost is speed where the fast algorithm was the non-deterministic one: the max-pool
gradient of the autodiff path is a scatter.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib.metadata
import importlib.util
import mmap
import os
import pkgutil
import platform
from pathlib import Path

XLA_CPU_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
XLA_GPU_DETERMINISM = "--xla_gpu_deterministic_ops=true"

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # glibc <malloc.h>
KEEP_FREED_BYTES = 1 << 30  # return heap memory to the OS only above 1 GiB free at the top

UNTUNED = "CNNJAX_UNTUNED"  # set (non-empty): the entry points leave these settings off
_done: dict = {}  # what tune() did, for environment()


def wanted() -> bool:
    """Whether the entry points should tune: unless $CNNJAX_UNTUNED is set."""
    return not os.environ.get(UNTUNED)


# --------------------------------------------------------------------------- before JAX starts


def accelerator_plugins() -> list[str]:
    """The installed PJRT plugins JAX would load (jax_plugins.*, e.g. xla_cuda13) and libtpu."""
    found = []
    if importlib.util.find_spec("jax_plugins") is not None:
        import jax_plugins  # a namespace package: importing it loads no plugin

        found += sorted(m.name for m in pkgutil.iter_modules(jax_plugins.__path__))
    if importlib.util.find_spec("libtpu") is not None:
        found.append("libtpu")
    return found


def planned_platform() -> str:
    """Where JAX will run the work, known before it starts: "cpu", "gpu", "tpu", or "auto"
    (an accelerator plugin is installed and $JAX_PLATFORMS is unset: JAX picks at start)."""
    first = os.environ.get("JAX_PLATFORMS", "").split(",")[0].strip().lower()
    if first:
        return "gpu" if first in ("cuda", "rocm", "gpu") else first
    return "auto" if accelerator_plugins() else "cpu"


def _xla_libraries() -> list[Path]:
    """The shared libraries that parse $XLA_FLAGS: jaxlib's and each plugin's."""
    roots = []
    for name in ("jaxlib", "jax_plugins"):
        spec = importlib.util.find_spec(name)
        if spec is not None:
            roots += [Path(p) for p in spec.submodule_search_locations or ()]
    return [p for root in roots for p in root.rglob("*.so") if p.stat().st_size > 10 * 2**20]


@functools.cache
def xla_knows(flag: str) -> bool:
    """Whether every installed XLA registers `flag` (e.g. "--xla_foo=1"), read from the libraries
    without loading them: a registered flag's name is a NUL-terminated string constant there.
    (The name can also appear inside another flag's help text; the NULs exclude that.)"""
    name = b"\x00" + flag.removeprefix("--").split("=")[0].encode() + b"\x00"
    libraries = _xla_libraries()
    for path in libraries:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if data.find(name) < 0:
                return False
    return bool(libraries)


def add_xla_flag(flag: str) -> str:
    """Append `flag` to $XLA_FLAGS unless the user set it, or XLA does not know it. JAX reads
    $XLA_FLAGS once, when its backends start: a later call reaches only child processes."""
    name = flag.split("=")[0]
    flags = os.environ.get("XLA_FLAGS", "")
    if name in flags:
        return "set" if flag in _done.get("xla_flags", ()) else "left as the user set it"
    if not xla_knows(flag):
        return "not set: the installed XLA does not know it"
    os.environ["XLA_FLAGS"] = f"{flags} {flag}".strip()
    _done.setdefault("xla_flags", []).append(flag)
    return "set"


def keep_freed_memory() -> str:
    """glibc only: serve large blocks from the heap and keep freed memory for reuse."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return f"not set: needs glibc, this is {platform.system()} {platform.libc_ver()[0]}"
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    settings = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, KEEP_FREED_BYTES), (M_ARENA_MAX, 1))
    ok = all(libc.mallopt(option, value) == 1 for option, value in settings)
    return "set" if ok else "not set: mallopt refused"


def tune(*, deterministic: bool = True) -> dict:
    """Apply what fits the planned platform (module docstring); returns {setting: what
    happened}. Call before anything starts JAX's backends. Idempotent."""
    where = planned_platform()
    done = {"platform": where}
    if where == "cpu":
        done["xla_cpu_flag"] = add_xla_flag(XLA_CPU_FLAG)
        done["keep_freed_memory"] = "set" if _done.get("malloc") else keep_freed_memory()
        _done["malloc"] = done["keep_freed_memory"] == "set"
    else:
        if where == "auto":
            plugins = ", ".join(accelerator_plugins())
            why = (
                f"not set: {plugins} installed, JAX picks the platform "
                "(JAX_PLATFORMS=cpu runs on the CPU with these settings)"
            )
        else:
            why = f"not set: the work runs on {where}"
        done["xla_cpu_flag"] = done["keep_freed_memory"] = why
    if where in ("gpu", "auto"):
        done["gpu_determinism"] = add_xla_flag(XLA_GPU_DETERMINISM) if deterministic else "off"
    _done["settings"] = done
    return done


def untuned_environ() -> dict:
    """A copy of os.environ without this module's flags in $XLA_FLAGS (however they got there:
    set by tune() here, or inherited from a parent process that tuned): for child processes that
    must start untuned (a benchmark's untuned peers)."""
    env = dict(os.environ)
    ours = (XLA_CPU_FLAG, XLA_GPU_DETERMINISM)
    kept = [f for f in env.get("XLA_FLAGS", "").split() if f not in ours]
    if kept:
        env["XLA_FLAGS"] = " ".join(kept)
    else:
        env.pop("XLA_FLAGS", None)
    return env


# --------------------------------------------------------------------------- after JAX started


def environment() -> dict:
    """What this process runs on, for a run's config.json and summary.json: backend, device
    kind and count, processes, versions, $XLA_FLAGS and tune()'s settings, matmul precision."""
    import jax

    def version(package):
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    return dict(
        backend=jax.default_backend(),
        device_kind=jax.devices()[0].device_kind,
        device_count=jax.device_count(),
        process_count=jax.process_count(),
        python=platform.python_version(),
        versions={p: version(p) for p in ("jax", "jaxlib", "flax", "optax", "numpy")},
        plugins=accelerator_plugins(),
        xla_flags=os.environ.get("XLA_FLAGS", ""),
        runtime=_done.get("settings", "not tuned"),
        matmul_precision=jax.config.jax_default_matmul_precision,
    )
