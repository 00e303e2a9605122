"""cnnjax.runtime: each setting takes effect in a fresh process, and is refused or left alone
where it must be."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from cnnjax import runtime

# Runs in a fresh process: tune() (or not), then report what XLA compiled a convolution to and
# how many page faults 20 rounds of malloc, writing and freeing 64 and 16 MiB in
# a new thread cost.
PROBE = textwrap.dedent("""
    import ctypes, ctypes.util, json, resource, sys, threading
    from cnnjax import runtime
    settings = runtime.tune() if sys.argv[1] == "tune" else {}
    import jax, jax.numpy as jnp, numpy as np
    x, w = jnp.ones((8, 28, 28, 1)), jnp.ones((3, 3, 1, 32))
    conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "VALID",
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    hlo = jax.jit(conv).lower(x, w).compile().as_text()
    entry = hlo[hlo.index("ENTRY"):]
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    def touch():  # as XLA:CPU's threads do with a step's buffers: malloc, write, free
        def work(size):
            block = libc.malloc(size)
            ctypes.memset(block, 1, size)
            libc.free(block)
        for size in (1 << 26, 1 << 24):  # above and below the 32 MiB most an mmap threshold is
            thread = threading.Thread(target=work, args=(size,))
            thread.start()
            thread.join()
    touch()  # the first round faults either way: the heap grows once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        touch()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(json.dumps(dict(settings=settings, faults=faults,
                          eigen_conv=" convolution(" in entry, ynn_fusion="__ynn_fusion" in entry)))
""")


def _probe(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                          env=env, check=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_tune_puts_convolutions_on_xla_kernels_and_keeps_freed_memory():
    tuned, untuned = _probe("tune"), _probe("plain")
    assert tuned["settings"] == {"xla_cpu_flag": "set", "keep_freed_memory": "set"}
    # The untuned process is the control: jaxlib 0.10 gives the convolution to YNNPACK, and
    # each block comes from fresh mmap pages (20,480 faults of 4 KiB each per round).
    assert untuned["ynn_fusion"] and not untuned["eigen_conv"]
    assert tuned["eigen_conv"] and not tuned["ynn_fusion"]
    assert untuned["faults"] > 20 * 10_000
    assert tuned["faults"] < 1_000


def test_tune_after_jax_started_is_an_error_naming_the_fix(monkeypatch):
    import jax.numpy as jnp

    jnp.ones(1)  # backends started
    monkeypatch.setattr(runtime, "_before", {})  # as if conftest had not tuned this process
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    with pytest.raises(RuntimeError, match="before JAX starts its backends"):
        runtime.tune()


def test_tune_again_changes_nothing_and_reports_what_the_first_did():
    flags = os.environ.get("XLA_FLAGS")
    first = runtime.tune()  # conftest tuned this process already
    assert runtime.tune() == first and os.environ.get("XLA_FLAGS") == flags
    assert first["xla_cpu_flag"] in ("set", "left as the user set it")


def test_a_flag_the_user_set_is_left_alone(monkeypatch):
    monkeypatch.setattr(runtime, "_before", {})
    mine = f"{runtime.FLAG_NAME}=-individual_dot"
    monkeypatch.setenv("XLA_FLAGS", mine)
    assert runtime.set_xla_cpu_flag() == "left as the user set it"
    assert os.environ["XLA_FLAGS"] == mine


def test_no_flag_for_a_jaxlib_it_is_not_known_in(monkeypatch):
    monkeypatch.setattr(runtime, "_before", {})
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setattr(runtime, "_jaxlib_version", lambda: (0, 11))
    assert runtime.set_xla_cpu_flag() == "not set: jaxlib 0.11 is not in runtime.JAXLIB_WITH_FLAG"
    assert "XLA_FLAGS" not in os.environ


def test_untuned_environ_is_the_environment_before_tune(monkeypatch):
    theirs = "--xla_force_host_platform_device_count=2"
    monkeypatch.setattr(runtime, "_before", {"XLA_FLAGS": theirs})
    monkeypatch.setenv("XLA_FLAGS", f"{theirs} {runtime.XLA_CPU_FLAG}")
    assert runtime.untuned_environ()["XLA_FLAGS"] == theirs
    monkeypatch.setattr(runtime, "_before", {"XLA_FLAGS": None})
    assert "XLA_FLAGS" not in runtime.untuned_environ()


@pytest.mark.parametrize(("untuned", "calls"), [("", 1), ("1", 0)])
def test_entry_points_tune_unless_untuned_is_set(monkeypatch, untuned, calls):
    import experiments

    done = []
    monkeypatch.setattr(runtime, "tune", lambda: done.append(1) or {})
    monkeypatch.setenv("CNNJAX_UNTUNED", untuned)
    experiments.begin(["python -m experiments.x"])
    assert len(done) == calls
