"""cnnjax.bench.machine: FLOP counts by hand; the matmul peak, the machine's description and the
resident memory are what they say."""

import numpy as np
import pytest

from cnnjax import models
from cnnjax.bench import machine
from cnnjax.models import Conv, Dense, Flatten, MaxPool, ReLU


def test_flops_counted_by_hand():
    spec = (Conv(2, 3), ReLU(), MaxPool(2), Flatten(), Dense(3))
    # conv 6x6x1 -> 4x4x2: 4*4*2 outputs of 3*3*1 MACs = 288; pool -> 2x2x2 = 8; dense 8*3 = 24
    assert machine.flops_per_image(spec, (6, 6, 1)) == dict(forward=2 * 312, train=6 * 312)
    # stride 2, SAME: 5x5x2 -> 3x3x4, each of 3*3*2 MACs
    strided = (Conv(4, 3, stride=2, padding="SAME"),)
    assert machine.flops_per_image(strided, (5, 5, 2))["forward"] == 2 * 3 * 3 * 4 * 18
    # the reference net: 194,688 + 2,230,272 + 204,800 + 1,280 MACs (the issue's ~15.8 MFLOP)
    flops = machine.flops_per_image(models.REFERENCE_CNN, models.REFERENCE_INPUT_SHAPE)
    assert flops == dict(forward=5_262_080, train=15_786_240)


def test_the_matmul_peak_is_the_best_of_its_repeats():
    peak = machine.matmul_peak(n=64, repeats=3)
    assert peak["n"] == 64 and np.isfinite(peak["gflop_per_s"])
    assert 0 < peak["gflop_per_s_median"] <= peak["gflop_per_s"]


def test_the_machine_and_its_memory():
    described = machine.machine()
    assert described["cores"] >= 1 and described["backend"] == "cpu" and described["jax"]
    assert described["load_average"] >= 0
    assert machine.machine_line().endswith(f"jax {described['jax']}")
    status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
    vm_rss_mib = int(status["VmRSS"].split()[0]) / 1024  # kB
    vm_hwm_mib = int(status["VmHWM"].split()[0]) / 1024  # kB: the peak
    assert machine.rss_mib() == pytest.approx(vm_rss_mib, abs=16)  # MiB, not pages or KiB
    assert machine.peak_rss_mib() == pytest.approx(vm_hwm_mib, abs=16)
    assert machine.peak_rss_mib() >= machine.rss_mib() - 1
