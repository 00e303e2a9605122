"""Sweeps killed for real (SIGKILL, cnnjax.faults) while results are written, after a population's
checkpoint and at a random moment: each `--resume` ends with every member in results.jsonl exactly
once and equal, bit for bit, to an uninterrupted sweep's; the same for a shard and the merge; and a
member whose training or evaluation stops being finite is marked diverged and left out of the
stats while the others finish."""

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from cnnjax.output import jsonl
from cnnjax.sweeps import grid, merging, results, sweep
from cnnjax.training import train
from configs import sweep_smoke
from tests.builders import REPO, compile_cache_env, config_for

# Two programs (batch sizes 32 and 64) of two seeds each: two populations of two members, and the
# same two populations ([0, 2] and [1, 3]) in the whole sweep as in shards 0/2 and 1/2, so that
# a shard's members train in the same program as the whole sweep's and end bit-identical.
SWEEP_FILE = """
from configs import sweep_smoke

def get_config():
    config = sweep_smoke.get_config()  # 1 epoch, the "unroll" layout
    config.sweep.max_members = 2
    return config

def get_sweep():
    return [{"seed": [0, 1]}, {"train.batch_size": [32, 64]}]
"""
MEMBERS = [0, 1, 2, 3]
SHARDS = {0: [0, 2], 1: [1, 3]}
KILLED = -signal.SIGKILL  # a child's return code when SIGKILL ended it


@pytest.fixture(scope="module")
def command(dataset, tmp_path_factory):
    """fn(workdir, *flags, kill_at=None) -> a started `python -m experiments.sweep` process."""
    root = tmp_path_factory.mktemp("sweep_faults")
    (root / "faults_sweep.py").write_text(SWEEP_FILE)
    source, tfds_dir = dataset
    env = dict(os.environ, **compile_cache_env(root / "jax_cache"))  # compiled once

    def start(workdir, *flags, kill_at=None):
        args = [
            sys.executable,
            "-m",
            "experiments.sweep",
            f"--config={root / 'faults_sweep.py'}",
            f"--workdir={workdir}",
            "--config.data.name=mnist",
            "--config.data.flip=False",
            "--config.data.train_examples=512",
            f"--config.data.source_dir={source}",
            f"--config.data.tfds_dir={tfds_dir}",
            *flags,
        ]
        child_env = dict(env, CNNJAX_KILL_AT=kill_at) if kill_at else env
        return subprocess.Popen(
            args, cwd=REPO, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )

    return start


def finish(process, want_rc=0):
    out = process.communicate(timeout=300)[0].decode()
    assert process.returncode == want_rc, out
    return out


@pytest.fixture(scope="module")
def reference(command, tmp_path_factory):
    """The uninterrupted sweep's directory."""
    workdir = tmp_path_factory.mktemp("reference") / "sweep"
    finish(command(workdir))
    return workdir


def assert_like(workdir, reference, note=""):
    """Every member once in results.jsonl, each as in the reference bit for bit, and each
    population's metrics.jsonl the reference's (but for the time each epoch took)."""
    assert outcomes(workdir / "results.jsonl") == outcomes(reference / "results.jsonl"), note
    for pdir in sorted((reference / "populations").iterdir()):
        got, want = (
            jsonl.read_metrics(d / pdir.name / "metrics.jsonl")
            for d in (workdir / "populations", reference / "populations")
        )
        strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
        assert strip(got) == strip(want), f"population {pdir.name} {note}"


def outcomes(path) -> dict:
    """member -> (params_hash, test_accuracy, test_loss), asserting each member is there once."""
    rows = results.read_rows(path)
    members = [r["member"] for r in rows]
    assert len(members) == len(set(members)), f"{path} lists a member twice: {members}"
    return {r["member"]: (r["params_hash"], r["test_accuracy"], r["test_loss"]) for r in rows}


def members_in(path):
    return sorted(r["member"] for r in results.read_rows(path))


@pytest.mark.parametrize(
    "kill_at",
    [
        "population.row:3",  # the second population's metrics, between its members' rows
        "results.row:3",  # the second population's first row in the temporary file
        "population.checkpoint:2",  # the second population's checkpoint, before its rows
    ],
)
def test_a_sweep_killed_at_a_chosen_point_resumes_to_the_uninterrupted_results(
    command, reference, kill_at, tmp_path
):
    workdir = tmp_path / "sweep"
    finish(command(workdir, kill_at=kill_at), KILLED)
    assert members_in(workdir / "results.jsonl") == [0, 2]  # the first population, whole
    out = finish(command(workdir, "--resume"))
    assert_like(workdir, reference)
    table = [line for line in out.splitlines() if "±" in line]  # not the progress lines
    assert [line.count(" 2/2 ") for line in table] == [1, 1]  # two settings, two seeds each
    assert not (workdir / "results.jsonl.partial").exists()


def test_a_sweep_killed_at_a_random_moment_resumes_to_the_uninterrupted_results(
    command, reference, tmp_path
):
    seed = random.randrange(10**6)
    draw, workdir, window_s = random.Random(seed), tmp_path / "sweep", 3.0
    for _ in range(3):  # a kill drawn after the sweep's end is drawn again, within its length
        shutil.rmtree(workdir, ignore_errors=True)
        victim = command(workdir)
        deadline = time.monotonic() + 120
        while not (workdir / "populations").exists() and victim.poll() is None:
            assert time.monotonic() < deadline, "the sweep never started a population"
            time.sleep(0.01)
        started, delay = time.monotonic(), draw.uniform(0.0, window_s)
        while victim.poll() is None and time.monotonic() < started + delay:
            time.sleep(0.01)  # somewhere in training, evaluation, checkpoints or results
        if victim.poll() is None:
            victim.send_signal(signal.SIGKILL)
            victim.communicate()
            break
        window_s = 0.9 * (time.monotonic() - started)
    assert victim.returncode == KILLED, f"the sweep always ended first (seed {seed})"
    finish(command(workdir, "--resume"))
    assert_like(workdir, reference, f"killed {delay:.2f} s in (seed {seed})")


def test_a_shard_killed_between_rows_resumes_and_merges_to_the_uninterrupted_results(
    command, reference, tmp_path
):
    reference = outcomes(reference / "results.jsonl")
    workdir = tmp_path / "sweep"
    shard0 = workdir / "shard-0-of-2" / "results.jsonl"
    finish(command(workdir, "--shard=0/2", kill_at="results.row:1"), KILLED)
    assert not shard0.exists()  # its one population's rows were never half there
    finish(command(workdir, "--shard=1/2"))
    with pytest.raises(grid.SweepError, match=r"shard 0/2 has finished 0 of its 2 members"):
        merging.merge(workdir)
    finish(command(workdir, "--shard=0/2", "--resume"))
    merged = merging.merge(workdir)
    assert [r["member"] for r in merged] == MEMBERS
    assert outcomes(workdir / "results.jsonl") == reference

    # An older version's crash could leave a member's row twice: identical rows count once ...
    lines = shard0.read_text().splitlines()
    shard0.write_text("\n".join([lines[0], *lines]) + "\n")
    assert [r["member"] for r in merging.merge(workdir)] == MEMBERS
    assert outcomes(workdir / "results.jsonl") == reference
    # ... rows that disagree are refused, naming the file, and --resume repairs them.
    changed = dict(json.loads(lines[0]), test_loss=0.0)
    shard0.write_text("\n".join([json.dumps(changed), *lines]) + "\n")
    with pytest.raises(grid.SweepError, match=rf"{shard0}.*members \[0\].*--shard 0/2 --resume"):
        merging.merge(workdir)
    finish(command(workdir, "--shard=0/2", "--resume"))
    assert outcomes(shard0) == {m: reference[m] for m in SHARDS[0]}
    assert outcomes(workdir / "results.jsonl") == reference  # the refused merge wrote nothing


def test_diverged_members_are_marked_and_left_out_while_the_others_finish(
    dataset, tmp_path, monkeypatch
):
    """Member 2 (learning rate 1e30) diverges in training; member 1's evaluation is made
    non-finite (as an overflowing forward pass would make it): both are diverged, member 0 alone
    counts in its setting, and the population's checkpoint still resumes."""
    config = config_for(dataset, epochs=1, batch_size=64)
    config.data.train_examples = 256  # 4 steps
    config.sweep = sweep_smoke.get_config().sweep  # the "unroll" layout: one population of 3
    axes = [{"optim.learning_rate": [0.05, 0.05, 1e30], "seed": [0, 1, 0]}]
    real, calls = train.evaluate_fed, []

    def member_1_overflows(*args, **kwargs):
        calls.append(1)
        test = real(*args, **kwargs)
        return dict(test, loss=math.nan) if len(calls) == 2 else test

    monkeypatch.setattr(train, "evaluate_fed", member_1_overflows)
    rows = sweep.fit(config, axes, tmp_path / "sweep")
    monkeypatch.setattr(train, "evaluate_fed", real)
    assert len(calls) == 3  # one evaluation per member
    diverged = {r["member"]: r["diverged_at"] for r in rows}
    assert diverged[0] is None and diverged[1] == 4  # at the end of its epoch: step 4
    assert 1 <= diverged[2] <= 4  # within its first epoch
    summary = results.settings_summary(rows)
    assert [(s["members"], s["diverged"]) for s in summary] == [(2, 1), (1, 1)]
    assert summary[0]["test_accuracy"] == (rows[0]["test_accuracy"], 0.0)  # member 0 alone
    assert math.isnan(summary[1]["test_accuracy"][0])
    assert results.best_setting(summary) == 0
    table = (tmp_path / "sweep" / "table.txt").read_text()
    assert "1/2" in table and "0/1" in table

    # Killed after the population's checkpoint, before its rows: the resumed sweep makes the
    # same rows (diverged_at included) from the checkpoint and the metrics file.
    (tmp_path / "sweep" / "results.jsonl").unlink()
    resumed = sweep.fit(config, axes, tmp_path / "sweep", resume=True)
    assert [json.dumps(r) for r in resumed] == [json.dumps(r) for r in rows]  # NaN as NaN
    epochs = jsonl.read_metrics(tmp_path / "sweep" / "populations" / "0" / "metrics.jsonl")
    assert {r["member"]: r["diverged_at"] for r in epochs} == diverged
