"""cnnjax (what importing loads): the math core loads no tqdm, matplotlib, orbax, TFDS or Flax,
and the checking entry points run where those packages cannot be imported at all (as on an
accelerator image that lacks them)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cnnjax.training import idx
from tests.builders import REPO, write_idx_dir

HEAVY = ("tqdm", "matplotlib", "orbax", "tensorflow_datasets", "flax")

LOADED = """
import sys
import cnnjax.ops, cnnjax.losses, cnnjax.models, cnnjax.grads, cnnjax.backprop
print(sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[1:])))
"""

# Runs `python -m MODULE ARGS...` where the BLOCKED packages raise ModuleNotFoundError on import;
# the fake MNIST files' sha256s replace the official table (as `data.load`'s checksums= does).
WITHOUT = """
import importlib.abc, json, runpy, sys
BLOCKED = {"tensorflow_datasets", "orbax", "matplotlib"}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")

sys.meta_path.insert(0, Block())
module, checksums = sys.argv[1], json.loads(sys.argv[2])
from cnnjax.training import idx
idx.Mnist.SHA256 = checksums
sys.argv = [module, *sys.argv[3:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def test_the_math_core_loads_no_heavy_package():
    done = subprocess.run(
        [sys.executable, "-c", LOADED, *HEAVY], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert done.stdout.strip() == "[]"


def test_the_blocker_blocks():
    """The control: a module that needs TFDS fails under the blocker, so passing means a thing."""
    done = _run_without("cnnjax.training.data", {})
    assert done.returncode != 0 and "blocked by the test" in done.stderr


@pytest.mark.slow
def test_gradcheck_runs_without_tfds_orbax_or_matplotlib():
    # One dtype and no random networks: what matters is that the entry point runs to its end.
    few = ("--config.num_random_specs=0", "--config.layer_cases=1", "--config.dtypes=('float32',)")
    done = _run_without("experiments.gradcheck", {}, *few)
    assert done.returncode == 0, done.stderr[-2000:]
    assert " 0 failed" in done.stdout


@pytest.mark.slow
def test_compare_flax_runs_without_tfds_orbax_or_matplotlib(tmp_path, monkeypatch):
    _, checksums = write_idx_dir(tmp_path / "idx", gz=True)
    monkeypatch.delenv(idx.ENV_VAR, raising=False)
    done = _run_without(
        "experiments.compare_flax",
        checksums,
        "--config.batch=8",
        f"--config.source_dir={tmp_path / 'idx'}",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "20/20 passed" in done.stdout and "batch 8" in done.stdout


def _run_without(module: str, checksums: dict, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", WITHOUT, module, json.dumps(checksums), *args]
    return subprocess.run(
        command, capture_output=True, text=True, cwd=REPO, timeout=600, check=False
    )
