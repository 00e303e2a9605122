"""cnnjax.sweeps.search: spaces checked before anything runs, samplers that draw in range and
the same again from the same seed, TPE rounds that learn from the rounds before them, and a
search sweep run, resumed and merged like a grid's."""

import importlib
import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from cnnjax.sweeps import grid, results, search, sweep
from configs import sweep_lr
from tests.builders import REPO, compile_cache_env, config_for, sweep_command

LR = search.LogUniform(0.01, 0.1)
SPACE = {
    "optim.learning_rate": search.LogUniform(0.01, 0.5),
    "train.label_smoothing": search.Uniform(0.0, 0.2),
    "optim.nesterov": search.Choice((True, False)),
    "train.batch_size": search.IntUniform(16, 64, log=True),
}


@pytest.mark.parametrize(
    "space, fields, message",
    [
        ({"optim.learnin_rate": LR}, {}, r"did you mean 'optim\.learning_rate'"),
        ({"optim.learning_rate": search.LogUniform(0.0, 0.1)}, {}, r"needs 0 < low"),
        ({"optim.learning_rate": search.Uniform(0.1, 0.1)}, {}, r"needs low < high"),
        ({"optim.learning_rate": search.Uniform(0.1, math.inf)}, {}, r"finite numbers"),
        ({"train.batch_size": search.IntUniform(8, 2.5)}, {}, r"needs integers"),
        ({"train.label_smoothing": search.Uniform(0.0, 2.0)}, {}, r"reaches 2\.0, which the con"),
        ({"optim.schedule": search.Choice(("cosine", "cosine"))}, {}, r"distinct values"),
        ({"optim.schedule": search.Choice(("cosine", "sawtooth"))}, {}, r"reaches 'sawtooth'"),
        ({"optim.momentum": [0.5, 0.9]}, {}, r"must be a range \(Uniform, LogUniform"),
        ({}, {}, r"non-empty dict"),
        (SPACE, {"sampler": "grid"}, r"sampler must be one of"),
        (SPACE, {"members": 0}, r"members must be an integer >= 1"),
    ],
)  # fmt: skip
def test_a_bad_search_is_an_error_before_anything_runs(space, fields, message, tmp_path):
    with pytest.raises(grid.SweepError, match=message):
        sweep.fit(sweep_lr.get_config(), search.Search(space, **fields), tmp_path / "sweep")
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("sampler", search.SAMPLERS)
def test_samplers_draw_inside_the_space_and_the_same_again_from_the_same_seed(sampler):
    s = search.Search(SPACE, sampler=sampler, members=8, seed=3, round_size=8)
    drawn = search.ask(s, 0, [])
    assert drawn == search.ask(s, 0, [])
    assert drawn != search.ask(search.Search(SPACE, sampler=sampler, members=8, seed=4), 0, [])
    assert len(drawn) == 8 and all(list(d) == list(SPACE) for d in drawn)
    for d in drawn:
        assert 0.01 <= d["optim.learning_rate"] <= 0.5
        assert 0.0 <= d["train.label_smoothing"] <= 0.2
        assert type(d["train.batch_size"]) is int and 16 <= d["train.batch_size"] <= 64
        assert type(d["optim.nesterov"]) is bool
    json.loads(json.dumps(drawn))  # the overrides results.jsonl keeps


def test_quasi_random_points_cover_the_range_more_evenly_than_random_ones():
    """16 points in [0, 1]: the largest gap between neighbours (edges included) of a scrambled
    Sobol sequence is about 1/16; uniform random points leave gaps ~3x wider."""
    space = {"train.label_smoothing": search.Uniform(0.0, 1.0)}

    def widest_gap(sampler, seed):
        drawn = search.ask(search.Search(space, sampler=sampler, members=16, seed=seed), 0, [])
        xs = np.sort([0.0, 1.0, *(d["train.label_smoothing"] for d in drawn)])
        return np.diff(xs).max()

    sobol = np.mean([widest_gap("sobol", seed) for seed in range(5)])
    random = np.mean([widest_gap("random", seed) for seed in range(5)])
    assert sobol < 0.6 * random, (sobol, random)


def test_rounds_split_a_tpe_search_and_leave_the_others_whole():
    assert search.rounds(search.Search(SPACE, "tpe", members=10, round_size=4)) == [
        [0, 1, 2, 3], [4, 5, 6, 7], [8, 9]
    ]  # fmt: skip
    assert search.rounds(search.Search(SPACE, "sobol", members=10, round_size=4)) == [
        list(range(10))
    ]


def _row(accuracy, diverged_at=None):
    return {"test_accuracy": accuracy, "diverged_at": diverged_at}


def test_tpe_asks_near_the_best_members_it_was_told_of():
    """A synthetic objective peaked at learning rate 0.1: after 12 members told, TPE's next
    round lies nearer the peak (in log) than a random round from the same seed; it also
    depends on what it was told, and a diverged member counts as a failure, not a score."""
    space = {"optim.learning_rate": search.LogUniform(1e-3, 1.0)}
    score = lambda o: -abs(math.log10(o["optim.learning_rate"]) + 1)  # noqa: E731
    tpe = search.Search(space, "tpe", members=20, round_size=4, startup=8)
    told = []
    for r in range(3):
        told += [(o, _row(score(o))) for o in search.ask(tpe, r, told)]
    nxt = search.ask(tpe, 3, told)
    rand = search.ask(search.Search(space, "random", members=4, seed=0), 0, [])
    assert np.mean([-score(o) for o in nxt]) < 0.5 * np.mean([-score(o) for o in rand])
    flipped = [(o, _row(-row["test_accuracy"])) for o, row in told]
    assert search.ask(tpe, 3, flipped) != nxt
    failed = [
        (o, _row(row["test_accuracy"], 5 if i == 0 else None)) for i, (o, row) in enumerate(told)
    ]
    assert search.ask(tpe, 3, failed) != nxt
    assert search.ask(tpe, 3, told) == nxt


def test_a_search_round_trips_through_its_json():
    s = search.Search(SPACE, sampler="tpe", members=6, seed=2, round_size=3, startup=2)
    described = json.loads(json.dumps(s.to_json()))
    assert search.is_search(described) and search.from_json(described) == s


SEARCH_FILE = """
from configs import sweep_smoke
from cnnjax.sweeps import search

def get_config():
    config = sweep_smoke.get_config()  # 1 epoch
    config.sweep.layout = "sequential"
    return config

def get_sweep():
    return search.Search(
        {
            "optim.learning_rate": search.LogUniform(0.01, 0.3),
            "train.label_smoothing": search.Uniform(0.0, 0.2),
        },
        sampler="{sampler}", members=3, round_size=2, startup=2, seed=1,
    )
"""


def test_a_tpe_search_runs_its_rounds_and_resumes_as_it_ran(dataset, tmp_path):
    config = config_for(dataset, epochs=1)
    config.data.train_examples = 256
    config.sweep = sweep_lr.get_config().sweep
    config.sweep.layout = "sequential"
    space = {"optim.learning_rate": search.LogUniform(0.01, 0.3)}
    s = search.Search(space, sampler="tpe", members=3, round_size=2, startup=2, seed=1)
    rows = sweep.fit(config, s, tmp_path / "sweep")
    directory = tmp_path / "sweep"
    recorded = json.loads((directory / "stages.json").read_text())
    asked = {m: v["overrides"] for stage in recorded for m, v in stage["members"].items()}
    assert [r["overrides"] for r in rows] == [asked[str(m)] for m in range(3)]
    assert [list(stage["members"]) for stage in recorded] == [["0", "1"], ["2"]]
    assert json.loads((directory / "plan.json").read_text()) == [[[0], [1]], [[2]]]
    first = search.ask(s, 0, [])
    assert [r["overrides"] for r in rows[:2]] == first
    assert [rows[2]["overrides"]] == search.ask(s, 1, [(r["overrides"], r) for r in rows[:2]])
    assert {"table.txt", "search_progress.png"} <= {p.name for p in directory.iterdir()}
    again = sweep.fit(config, s, directory, resume=True)  # finished: nothing to train
    assert again == rows
    # A sampler that asks otherwise on resume (here: a recorded member changed) is refused.
    recorded[1]["members"]["2"]["overrides"] = {"optim.learning_rate": 0.5}
    (directory / "stages.json").write_text(json.dumps(recorded))
    with pytest.raises(grid.SweepError, match=r"stage 1 now plans .* for member 2, where"):
        sweep.fit(config, s, directory, resume=True)
    assert results.read_rows(directory / "results.jsonl") == rows  # nothing lost


def assert_shards_merge_to_the_whole(dataset, path, tmp_path, count, *, together=True):
    """The sweep config at `path` run whole, then as two shards (started at once, or one after
    the other) and merged: the same `count` members, overrides and params bit for bit."""
    env = dict(os.environ, **compile_cache_env(tmp_path / "jax_cache"))
    whole = subprocess.run(
        sweep_command(dataset, path, tmp_path / "whole"), cwd=REPO, env=env, capture_output=True,
        text=True,
    )  # fmt: skip
    assert whole.returncode == 0, whole.stderr
    shards = [sweep_command(dataset, path, tmp_path / "sharded", f"--shard={i}/2") for i in (0, 1)]
    if together:
        started = [subprocess.Popen(c, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
                   for c in shards]  # fmt: skip
        for child in started:
            assert child.wait(timeout=600) == 0, child.stderr.read()
    else:
        for command in shards:
            done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
    merge = [sys.executable, "-m", "experiments.sweep", f"--workdir={tmp_path / 'sharded'}",
             "--merge"]  # fmt: skip
    merged = subprocess.run(merge, cwd=REPO, capture_output=True, text=True)
    assert merged.returncode == 0, merged.stderr
    key = lambda r: (r["member"], r["overrides"], r["params_hash"], r["test_accuracy"])  # noqa: E731
    want = [key(r) for r in results.read_rows(tmp_path / "whole" / "results.jsonl")]
    assert [key(r) for r in results.read_rows(tmp_path / "sharded" / "results.jsonl")] == want
    assert len(want) == count and (tmp_path / "sharded" / "search_progress.png").exists()
    return results.read_rows(tmp_path / "whole" / "results.jsonl")


def test_a_sharded_search_merges_to_the_whole_one(dataset, tmp_path):
    """A sobol search has one stage: its shards need not run at the same time."""
    path = tmp_path / "search.py"
    path.write_text(SEARCH_FILE.replace("{sampler}", "sobol"))
    assert_shards_merge_to_the_whole(dataset, path, tmp_path, count=3, together=False)


def test_a_tpe_search_in_shards_asks_and_trains_as_the_whole_one(dataset, tmp_path):
    """Two shards started at once: each round waits for both shards' members of the round
    before (stages/<s>.json), so every shard asks the same members, and the merge equals the
    search run as one shard."""
    path = tmp_path / "search.py"
    path.write_text(SEARCH_FILE.replace("{sampler}", "tpe"))
    assert_shards_merge_to_the_whole(dataset, path, tmp_path, count=3)


@pytest.mark.parametrize(
    "kill_at",
    [
        "results.row:3",  # rewriting results.jsonl after round 0's second member, before round 1
        "sweep.stage:2",  # round 1 asked and recorded, nothing of it trained
        "population.checkpoint:3",  # round 1's member checkpointed, its row not yet written
    ],
)
def test_a_killed_tpe_search_resumes_to_the_uninterrupted_one(kill_at, dataset, tmp_path):
    """SIGKILL at a chosen point, then --resume: the same members asked, each trained to the
    same params bit for bit, every member in results.jsonl once."""
    path = tmp_path / "search.py"
    path.write_text(SEARCH_FILE.replace("{sampler}", "tpe"))
    env = dict(os.environ, **compile_cache_env(tmp_path / "jax_cache"))

    def run(workdir, *flags, kill_at=None):
        child = dict(env, CNNJAX_KILL_AT=kill_at) if kill_at else env
        command = sweep_command(dataset, path, workdir, *flags)
        return subprocess.run(command, cwd=REPO, env=child, capture_output=True, text=True)

    assert (whole := run(tmp_path / "whole")).returncode == 0, whole.stderr
    assert run(tmp_path / "killed", kill_at=kill_at).returncode == -signal.SIGKILL
    assert (resumed := run(tmp_path / "killed", "--resume")).returncode == 0, resumed.stderr
    key = lambda r: (r["member"], r["overrides"], r["params_hash"], r["test_accuracy"])  # noqa: E731
    want = [key(r) for r in results.read_rows(tmp_path / "whole" / "results.jsonl")]
    assert [key(r) for r in results.read_rows(tmp_path / "killed" / "results.jsonl")] == want
    for name in ("stages.json", "plan.json"):
        assert (tmp_path / "killed" / name).read_text() == (tmp_path / "whole" / name).read_text()


@pytest.mark.parametrize("name", ["search_tpe", "search_sobol"])
def test_the_shipped_search_configs_are_valid_searches(name):
    path = REPO / "configs" / f"{name}.py"
    found = grid.axes_from_file(str(path))
    config = importlib.import_module(f"configs.{name}").get_config()
    search.check(config, found)  # fields, ranges and both ends of each as the config accepts
    assert found.members == 16 and sum(map(len, search.rounds(found))) == 16
