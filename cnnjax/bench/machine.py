"""What the machine can do and what a measurement costs it: FLOPs per image from a network's
shapes, the float32 matmul peak, the machine's description, this process's resident memory."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import resource
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import layers, models, ops
from cnnjax.bench import timing


def flops_per_image(spec, input_shape) -> dict:
    """FLOPs of one image through `spec`, from the shapes alone: {"forward", "train"}.

    A conv layer with an H'xW'xO output and a kh x kw x C kernel does H'W'O·kh·kw·C multiply-adds
    (MACs), a dense layer I -> O does I·O, and a MAC is 2 FLOPs:
        forward = 2 · Σ MACs
    The backward pass computes each layer's input gradient (a full convolution with the flipped
    kernel, or W·dy: the layer's MACs again) and its weight gradient (x correlated with dy, or
    x·dyᵀ: the MACs again), so backward ≈ 2 · forward and
        train = forward + backward = 3 · forward  (per image per step).
    This counts the first layer's input gradient too, which no step computes (for the reference
    net 2·194,688 FLOPs, 2.5% of its total), and leaves out bias adds, ReLU, pooling, softmax and
    the optimizer's update, which are O(activations + params) (about 2% the other way).
    Reference CNN: conv1 26·26·32·9 = 194,688, conv2 11·11·64·288 = 2,230,272, dense1 1600·128 =
    204,800, dense2 128·10 = 1,280: 2,631,040 MACs, forward 5.26 MFLOP, train 15.79 MFLOP.
    """
    macs = _macs(spec, tuple(input_shape))
    return dict(forward=2 * macs, train=6 * macs)


def _macs(spec, shape) -> int:
    """Multiply-adds of the convs and dense layers of `spec`, a Residual's body and projection
    included."""
    macs = 0
    for layer in spec:
        out = models.layer_output_shape(layer, shape)
        if isinstance(layer, models.Conv):
            kh, kw = ops.as_pair(layer.kernel_size, "kernel_size")
            macs += int(np.prod(out)) * kh * kw * shape[-1]
        elif isinstance(layer, models.Dense):
            macs += layer.features * shape[-1]
        elif isinstance(layer, layers.Residual):
            skip = layer.skip(shape)
            macs += _macs(layer.body, shape) + (_macs((skip,), shape) if skip else 0)
        shape = out
    return macs


def matmul_peak(n: int = 2048, repeats: int = 10) -> dict:
    """The machine's float32 matmul rate: a jitted n x n @ n x n (2n³ FLOPs), best of `repeats`
    (the peak) and their median, in GFLOP/s."""
    a, b = jax.random.normal(jax.random.key(0), (2, n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    timed = timing.time_windows(lambda: jax.block_until_ready(matmul(a, b)), repeats)
    rates = 2 * n**3 / np.asarray(timed.seconds) / 1e9
    return dict(n=n, gflop_per_s=float(rates.max()), gflop_per_s_median=float(np.median(rates)))


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> dict:
    """CPU model (/proc/cpuinfo), cores, versions, jax's backend, the load average now."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return dict(
        cpu=names[0] if names else platform.processor() or platform.machine(),
        cores=os.cpu_count(),
        arch=platform.machine(),
        python=platform.python_version(),
        jax=jax.__version__,
        backend=jax.default_backend(),
        device=jax.devices()[0].device_kind,
        flax=_version("flax"),
        torch=_version("torch"),
        load_average=os.getloadavg()[0],
    )


def machine_line() -> str:
    """The architecture, the first device's kind and jax's version, on one line."""
    return f"{platform.machine()}, {jax.devices()[0].device_kind}, jax {jax.__version__}"


def rss_mib() -> float:
    """This process's resident memory now, in MiB (Linux /proc; 0 elsewhere)."""
    statm = Path("/proc/self/statm")
    if not statm.exists():
        return 0.0
    return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    """ru_maxrss in MiB: the most resident memory this process has held (the OS reports KiB on
    Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)
