"""A sweep of a researcher's own stateful and random layers (tests/user_layers.py, named by
--config.model.modules), killed for real after its population's first checkpoint and resumed:
its results and its last checkpoint (every member's params, network state and keys) are the
uninterrupted sweep's, bit for bit."""

import json
import os
import signal
import subprocess

import pytest

from cnnjax.sweeps import results
from cnnjax.training import checkpoints
from tests.builders import REPO, compile_cache_env, sweep_command

SWEEP_FILE = """
from configs import sweep_smoke

def get_config():
    config = sweep_smoke.get_config()  # the "unroll" layout
    config.train.epochs = 2
    config.model.modules = "tests.user_layers"
    config.model.spec = "user_net"
    return config

def get_sweep():
    return [{"seed": [0, 1]}]
"""


@pytest.fixture(scope="module")
def sweeps(dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep_state")
    (root / "state_sweep.py").write_text(SWEEP_FILE)
    env = dict(os.environ, **compile_cache_env(root / "jax_cache"))

    def start(workdir, *flags, kill_at=""):
        args = sweep_command(dataset, root / "state_sweep.py", workdir, *flags)
        return subprocess.Popen(
            args,
            cwd=REPO,
            env=dict(env, CNNJAX_KILL_AT=kill_at),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    whole, killed = start(root / "whole"), start(root / "killed", kill_at="population.checkpoint:1")
    outs = [p.communicate(timeout=600)[0] for p in (whole, killed)]
    assert whole.returncode == 0, outs[0]
    assert killed.returncode == -signal.SIGKILL, outs[1]
    resumed = start(root / "killed", "--resume")
    out = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, out
    return root


def _checksum(sweep_dir):
    path = sweep_dir / "populations" / "0" / "checkpoints" / "2" / checkpoints.CHECKSUM
    return json.loads(path.read_text())["sha256"]


def test_a_killed_sweep_of_user_layers_resumes_to_the_uninterrupted_one(sweeps):
    whole, resumed = sweeps / "whole", sweeps / "killed"
    assert _checksum(resumed) == _checksum(whole)  # the whole population's state, bit for bit
    rows = [
        {
            r["member"]: (r["params_hash"], r["test_loss"])
            for r in results.read_rows(d / "results.jsonl")
        }
        for d in (whole, resumed)
    ]
    assert rows[1] == rows[0] and sorted(rows[0]) == [0, 1]
