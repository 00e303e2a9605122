"""cnnjax.runtime: each setting takes effect in a fresh process, and is refused or left alone
where it must be."""

import json
import os
import subprocess
import sys
import textwrap

import jax
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
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_tune_puts_convolutions_on_xla_kernels_and_keeps_freed_memory():
    tuned, untuned = _probe("tune"), _probe("plain")
    assert tuned["settings"] == {
        "platform": "cpu",
        "xla_cpu_flag": "set",
        "keep_freed_memory": "set",
    }
    # The untuned process is the control: jaxlib >= 0.10 gives the convolution to YNNPACK, and
    # each block comes from fresh mmap pages (20,480 faults of 4 KiB each per round).
    assert untuned["ynn_fusion"] and not untuned["eigen_conv"]
    assert tuned["eigen_conv"] and not tuned["ynn_fusion"]
    assert untuned["faults"] > 20 * 10_000
    assert tuned["faults"] < 1_000


STARTS = "import jax.numpy as jnp; print(float(jnp.ones(3).sum()))"


@pytest.mark.parametrize(
    "flag", [runtime.XLA_CPU_FLAG, runtime.XLA_GPU_DETERMINISM, "--xla_cpu_no_such_flag=1"]
)
def test_xla_knows_agrees_with_a_process_started_with_the_flag(flag):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {
        "XLA_FLAGS": flag,
        "JAX_PLATFORMS": "cpu",
    }
    done = subprocess.run(
        [sys.executable, "-c", STARTS],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )
    assert runtime.xla_knows(flag) == (done.returncode == 0), done.stderr[-500:]
    if not runtime.xla_knows(flag):  # the control: XLA aborts on a flag it does not know
        assert done.returncode != 0 and "xla_cpu_no_such_flag" in done.stderr


def test_the_planned_platform(monkeypatch):
    monkeypatch.setattr(runtime, "accelerator_plugins", lambda: [])
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    assert runtime.planned_platform() == "cpu"
    monkeypatch.setattr(runtime, "accelerator_plugins", lambda: ["xla_cuda13"])
    assert runtime.planned_platform() == "auto"  # JAX decides when it starts
    for value, platform in (("cuda", "gpu"), ("cpu", "cpu"), ("tpu,cpu", "tpu"), ("rocm", "gpu")):
        monkeypatch.setenv("JAX_PLATFORMS", value)
        assert runtime.planned_platform() == platform


@pytest.fixture
def fresh(monkeypatch):
    """tune() as in a new process: no flags, nothing done yet (restored afterwards)."""
    monkeypatch.setattr(runtime, "_done", {})
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: "set")
    return monkeypatch


@pytest.mark.parametrize("platform", ["gpu", "auto"])
def test_on_a_gpu_no_cpu_settings_and_determinism_unless_asked_not(fresh, platform):
    fresh.setattr(runtime, "planned_platform", lambda: platform)
    fresh.setattr(runtime, "accelerator_plugins", lambda: ["xla_cuda13"])
    done = runtime.tune()
    assert done["xla_cpu_flag"].startswith("not set") and done["gpu_determinism"] == "set"
    assert done["keep_freed_memory"].startswith("not set")
    assert os.environ["XLA_FLAGS"] == runtime.XLA_GPU_DETERMINISM
    fresh.setattr(runtime, "_done", {})
    fresh.delenv("XLA_FLAGS")
    assert runtime.tune(deterministic=False)["gpu_determinism"] == "off"
    assert "XLA_FLAGS" not in os.environ


def test_on_the_cpu_the_cpu_settings_and_no_gpu_flag(fresh):
    fresh.setattr(runtime, "planned_platform", lambda: "cpu")
    done = runtime.tune()
    assert done == {"platform": "cpu", "xla_cpu_flag": "set", "keep_freed_memory": "set"}
    assert os.environ["XLA_FLAGS"] == runtime.XLA_CPU_FLAG
    assert runtime.tune() == done and os.environ["XLA_FLAGS"] == runtime.XLA_CPU_FLAG  # again


def test_a_flag_the_user_set_is_left_alone(fresh):
    fresh.setattr(runtime, "planned_platform", lambda: "cpu")
    mine = f"{runtime.XLA_CPU_FLAG.split('=')[0]}=-individual_dot"
    fresh.setenv("XLA_FLAGS", mine)
    assert runtime.tune()["xla_cpu_flag"] == "left as the user set it"
    assert os.environ["XLA_FLAGS"] == mine


def test_no_flag_that_the_installed_xla_does_not_know(fresh):
    fresh.setattr(runtime, "planned_platform", lambda: "cpu")
    fresh.setattr(runtime, "xla_knows", lambda flag: False)
    assert runtime.tune()["xla_cpu_flag"] == "not set: the installed XLA does not know it"
    assert "XLA_FLAGS" not in os.environ


def test_untuned_environ_drops_only_the_runtime_flags(monkeypatch):
    theirs = "--xla_force_host_platform_device_count=2"
    monkeypatch.setenv(
        "XLA_FLAGS", f"{theirs} {runtime.XLA_CPU_FLAG} {runtime.XLA_GPU_DETERMINISM}"
    )
    assert runtime.untuned_environ()["XLA_FLAGS"] == theirs
    monkeypatch.setenv("XLA_FLAGS", runtime.XLA_CPU_FLAG)  # e.g. inherited from a tuned parent
    assert "XLA_FLAGS" not in runtime.untuned_environ()
    assert os.environ["XLA_FLAGS"] == runtime.XLA_CPU_FLAG  # a copy: this process keeps its own


def test_the_environment_names_backend_devices_versions_and_flags():
    env = runtime.environment()
    assert env["backend"] == "cpu" and env["device_count"] == 1 and env["process_count"] == 1
    assert env["versions"]["jax"] == jax.__version__ and env["versions"]["flax"]
    assert env["xla_flags"] == os.environ.get("XLA_FLAGS", "")
    assert env["runtime"]["platform"] == "cpu"  # conftest tuned this process
    json.dumps(env)  # it goes into config.json and summary.json


@pytest.mark.parametrize(("untuned", "calls"), [("", 1), ("1", 0)])
def test_entry_points_tune_unless_untuned_is_set(monkeypatch, untuned, calls):
    import experiments

    done = []
    monkeypatch.setattr(runtime, "tune", lambda **kw: done.append(kw) or {})
    monkeypatch.setenv("CNNJAX_UNTUNED", untuned)
    experiments.begin(["python -m experiments.x"], deterministic=False)
    assert done == [{"deterministic": False}] * calls
