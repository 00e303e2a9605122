"""A run of a researcher's own stateful and random layers (tests/user_layers.py, named by
--config.model.modules), in real processes: killed at the end of epoch 2 and resumed, it ends
with the uninterrupted run's params, network state and dropout key (the whole checkpointed state,
bit for bit) and metrics; a module that does not import is one line and exit status 2."""

import json
import os
import signal
import subprocess

import pytest

from cnnjax.training import checkpoints
from tests.builders import REPO, compile_cache_env, train_command

EPOCHS = 3
SMALL = ("--config.data.train_examples=256",)  # 8 steps of 32 per epoch
USER = ("--config.model.modules=tests.user_layers", "--config.model.spec=user_net")


def _start(workdir, dataset, *extra, kill_at="", cache=None, user=USER):
    env = dict(os.environ, CNNJAX_KILL_AT=kill_at)
    env.update(compile_cache_env(cache))  # the same programs compiled once
    return subprocess.Popen(
        train_command(dataset, workdir, EPOCHS, *SMALL, *user, *extra),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process):
    out, err = process.communicate(timeout=600)
    return process.returncode, out, err


@pytest.fixture(scope="module")
def runs(dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("state_faults")
    cache = root / "jax_cache"
    whole = _start(root / "whole", dataset, cache=cache)
    killed = _start(root / "killed", dataset, kill_at="run.epoch_end:2", cache=cache)
    status, out, err = _finish(whole)
    assert status == 0, out + err
    status, out, err = _finish(killed)
    assert status == -signal.SIGKILL, out + err
    assert checkpoints.saved_epochs(root / "killed") == [1, 2]
    resumed = _finish(_start(root / "killed", dataset, "--resume", cache=cache))
    return dict(root=root, resumed=resumed)


def _checksum(directory, epoch):
    """The sha256 of every leaf of the checkpointed TrainState (params, optimizer state, step,
    keys, the network's state)."""
    path = directory / "checkpoints" / str(epoch) / checkpoints.CHECKSUM
    return json.loads(path.read_text())["sha256"]


def _rows(directory):
    rows = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_a_killed_run_of_user_layers_resumes_to_the_uninterrupted_state_and_metrics(runs):
    status, out, err = runs["resumed"]
    assert status == 0, out + err
    whole, resumed = runs["root"] / "whole", runs["root"] / "killed"
    assert _checksum(resumed, EPOCHS) == _checksum(whole, EPOCHS)
    summaries = [json.loads((d / "summary.json").read_text()) for d in (whole, resumed)]
    for key in ("params_hash", "test_accuracy", "test_loss"):
        assert summaries[1][key] == summaries[0][key]
    assert _rows(resumed) == _rows(whole)


def test_the_checkpointed_network_state_is_trained_and_kept(runs):
    from cnnjax import models
    from cnnjax.training import run

    config, setup, state, epochs = run.last_checkpoint(runs["root"] / "whole")
    assert (config.model.spec, epochs) == ("user_net", EPOCHS)
    start = models.init_state(setup.spec, setup.train_feed.split[0].shape[1:])
    assert set(state.model_state) == {"runningmean1", "runningmean2"}
    for name, layer_state in state.model_state.items():
        assert (layer_state["mean"] != start[name]["mean"]).all()  # trained from zeros


def test_a_module_that_does_not_import_is_one_line_and_exit_2(dataset, tmp_path):
    workdir = tmp_path / "run"
    status, _, err = _finish(
        _start(
            workdir, dataset, cache=tmp_path, user=("--config.model.modules=tests.no_such_layers",)
        )
    )
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert status == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith(
        "error: config.model.modules: cannot import tests.no_such_layers (ModuleNotFoundError:"
    )
    assert not workdir.exists()  # refused before anything was written
