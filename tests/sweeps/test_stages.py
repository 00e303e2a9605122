"""cnnjax.sweeps.stages: successive halving and PBT. The stages a schedule plans (rungs,
survivors, exploits) worked by hand; a survivor that trains exactly as its solo run; an
exploited member that takes its source's state; and staged sweeps that run from a config file,
shard, and resume bit for bit after real processes are killed."""

import json
import math
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from cnnjax.sweeps import grid, population, results, search, stages, sweep
from configs import sweep_lr
from tests.builders import (
    REPO,
    SMALL_SPEC,
    compile_cache_env,
    config_for,
    member_configs,
    sweep_command,
)

SPACE = {
    "optim.learning_rate": search.LogUniform(0.01, 0.3),
    "train.label_smoothing": search.Uniform(0.0, 0.2),
}


def _row(accuracy, overrides=None, diverged_at=None):
    return {"test_accuracy": accuracy, "diverged_at": diverged_at, "overrides": overrides or {}}


@pytest.mark.parametrize(
    "schedule, epochs, ends",
    [
        (search.Halving(min_epochs=1, eta=3), 9, [1, 3, 9]),
        (search.Halving(min_epochs=1, eta=3), 5, [1, 3, 5]),
        (search.Halving(min_epochs=2, eta=2), 9, [2, 4, 8, 9]),
        (search.PBT(interval=2), 5, [2, 4, 5]),
        (search.PBT(interval=1), 3, [1, 2, 3]),
        (None, 5, [5]),
    ],
)
def test_stages_end_at_the_rungs_or_every_interval(schedule, epochs, ends):
    s = search.Search(SPACE, members=9, schedule=schedule)
    assert stages.boundaries(s, epochs) == ends


def test_halving_keeps_the_best_third_and_never_a_diverged_member_before_a_healthy_one():
    rows = {m: _row(a) for m, a in enumerate([0.5, 0.9, 0.7, 0.9, 0.1, 0.6, 0.8, 0.2, 0.3])}
    assert stages.survivors(search.Halving(eta=3), rows) == [1, 3, 6]  # ties: the lower index
    rows[1] = _row(0.99, diverged_at=40)
    rows[3] = _row(math.nan)
    assert stages.survivors(search.Halving(eta=3), rows) == [2, 5, 6]
    assert stages.survivors(search.Halving(eta=3), {7: _row(0.1), 8: _row(0.2)}) == [8]


def test_a_halving_sweep_plans_survivors_over_the_following_epochs():
    s = search.Search(SPACE, members=4, seed=3, schedule=search.Halving(min_epochs=1, eta=2))
    first = stages.plan(s, 3, 0, [])
    assert first.epochs == (0, 1) and first.members == [0, 1, 2, 3] and first.sources == {}
    assert list(first.overrides.values()) == search.ask(s, 0, [])
    history = [
        {
            m: _row(a, first.overrides[m])
            for m, a in zip(first.members, [0.2, 0.8, 0.6, 0.4], strict=True)
        }
    ]
    second = stages.plan(s, 3, 1, history)
    assert second.epochs == (1, 2) and second.members == [1, 2]
    assert second.overrides == {m: first.overrides[m] for m in (1, 2)} and second.sources == {}
    history.append({1: _row(0.7, first.overrides[1]), 2: _row(0.9, first.overrides[2])})
    assert stages.plan(s, 3, 2, history).members == [2]
    assert stages.member_epochs([first, second, stages.plan(s, 3, 2, history)]) == 4 + 2 + 1


def test_pbt_replaces_the_bottom_fraction_by_explored_copies_of_the_top():
    """8 members, fraction 1/4: the 2 worst take the state of one of the 2 best, with each
    number multiplied by 0.8 or 1.25 (resample 0), clipped to its range; the others go on
    unchanged. The same rows and seed give the same step; another seed another."""
    pbt = search.PBT(interval=1, fraction=0.25, perturb=(0.8, 1.25), resample=0.0)
    s = search.Search(SPACE, members=8, seed=5, schedule=pbt)
    asked = search.ask(s, 0, [])
    rows = {m: _row(a, asked[m]) for m, a in enumerate([0.3, 0.9, 0.5, 0.1, 0.8, 0.6, 0.2, 0.7])}
    sources, overrides = stages.exploit_and_explore(s, 1, rows)
    assert sorted(sources) == [3, 6] and set(sources.values()) <= {1, 4}
    for m in range(8):
        if m not in sources:
            assert overrides[m] == asked[m]
            continue
        for field, r in SPACE.items():
            before, after = asked[sources[m]][field], overrides[m][field]
            assert r.low <= after <= r.high
            if r.low < before * 0.8 and before * 1.25 < r.high:
                assert min(abs(after / before - f) for f in (0.8, 1.25)) < 1e-12
    assert stages.exploit_and_explore(s, 1, rows) == (sources, overrides)
    others = [stages.exploit_and_explore(s, t, rows) for t in range(2, 8)]
    assert any(o != (sources, overrides) for o in others)
    stage = stages.plan(s, 3, 1, [rows])
    assert stage.members == list(range(8)) and stage.sources == sources
    lineage = stages.lineage([stages.plan(s, 3, 0, []), stage], 3)
    assert [(step["epoch"], step["from"]) for step in lineage] == [(0, None), (1, sources[3])]


def test_pbt_resampling_draws_inside_each_range():
    pbt = search.PBT(resample=1.0)
    space = SPACE | {"optim.nesterov": search.Choice((True, False))}
    s = search.Search(space, members=4, schedule=pbt)
    rng = np.random.default_rng(0)
    for _ in range(50):
        drawn = stages.explore(s, pbt, search.ask(s, 0, [])[0], rng)
        assert 0.01 <= drawn["optim.learning_rate"] <= 0.3 and drawn["optim.nesterov"] in (
            True,
            False,
        )


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(sampler="tpe", schedule=search.Halving()), r"give Halving a random, sobol or halton"),
        (dict(schedule=search.Halving(min_epochs=5)), r"Halving\.min_epochs must be an integer fr"),
        (dict(schedule=search.Halving(eta=1)), r"Halving\.eta must be an integer >= 2"),
        (dict(schedule=search.PBT(interval=0)), r"PBT\.interval must be an integer from 1"),
        (dict(schedule=search.PBT(fraction=0.7)), r"PBT\.fraction must be in \(0, 0\.5\]"),
        (dict(schedule=search.PBT(perturb=(0.8, -1.0))), r"PBT\.perturb must be a tuple"),
        (dict(schedule="halving"), r"Search\.schedule must be Halving"),
    ],
)  # fmt: skip
def test_a_bad_schedule_is_an_error_before_anything_runs(fields, message, tmp_path):
    with pytest.raises(grid.SweepError, match=message):
        sweep.fit(sweep_lr.get_config(), search.Search(SPACE, **fields), tmp_path / "sweep")
    assert not (tmp_path / "sweep").exists()


def test_pbt_sweeps_only_the_numbers_a_member_may_change_while_it_trains(tmp_path):
    space = {"train.batch_size": search.IntUniform(16, 64)}
    with pytest.raises(grid.SweepError, match=r"PBT changes the swept fields .* train\.batch_size"):
        sweep.fit(
            sweep_lr.get_config(), search.Search(space, schedule=search.PBT()), tmp_path / "s"
        )


def test_a_schedule_round_trips_through_the_searchs_json():
    """to_json is already what sweep.json holds (tuples as lists), so a resume compares equal."""
    space = SPACE | {"optim.nesterov": search.Choice((True, False))}
    for schedule in (search.Halving(min_epochs=2, eta=4), search.PBT(2, 0.5, (0.5, 2.0), 0.1)):
        s = search.Search(space, members=6, schedule=schedule)
        assert json.loads(json.dumps(s.to_json())) == s.to_json()
        assert search.from_json(s.to_json()) == s


def test_assemble_takes_a_sources_state_and_the_members_own_keys():
    configs = member_configs()
    pop = population.init(configs, SMALL_SPEC, (12, 12, 1), 16)
    pop = pop._replace(diverged_at=pop.diverged_at.at[2].set(7))
    template = population.init([configs[0]] * 2, SMALL_SPEC, (12, 12, 1), 16)
    built = population.assemble(template, [(pop, 1, pop, 0), (pop, 2, pop, 2)])
    for field in ("params", "opt_state", "step", "model_state"):
        want = jax.tree.map(lambda leaf: leaf[np.array([1, 2])], getattr(pop.state, field))
        jax.tree.map(np.testing.assert_array_equal, getattr(built.state, field), want)
    for field in ("data_key", "aug_key", "dropout_key"):
        np.testing.assert_array_equal(
            getattr(built.state, field), getattr(pop.state, field)[np.array([0, 2])]
        )
    np.testing.assert_array_equal(built.diverged_at, [0, 7])
    jax.tree.map(np.testing.assert_array_equal, built.hyper, template.hyper)


# ------------------------------------------------------------------------- staged sweeps run


def _config(dataset, layout="sequential", epochs=3):
    config = config_for(dataset, epochs=epochs)
    config.data.train_examples = 256
    config.sweep = sweep_lr.get_config().sweep
    config.sweep.layout = layout
    return config


def test_a_halving_survivor_trains_exactly_as_its_solo_run(dataset, tmp_path):
    """4 members, eta 2, 3 epochs: 4 train 1 epoch, the best 2 a second, the best of those a
    third (7 member-epochs, not 12); the survivor's params equal, bit for bit, those of the
    same member in the search run without halving (same overrides, schedule and data order)."""
    config = _config(dataset)
    halving = search.Search(SPACE, members=4, seed=1, schedule=search.Halving(1, 2))
    rows = sweep.fit(config, halving, tmp_path / "halving")
    plain = {r["member"]: r for r in sweep.fit(config, search.Search(SPACE, members=4, seed=1),
                                               tmp_path / "plain")}  # fmt: skip
    recorded = json.loads((tmp_path / "halving" / "stages.json").read_text())
    assert [len(st["members"]) for st in recorded] == [4, 2, 1]
    assert [st["epochs"] for st in recorded] == [[0, 1], [1, 2], [2, 3]]
    at_rung = [
        json.loads((tmp_path / "halving" / "stages" / f"{s}.json").read_text()) for s in (0, 1)
    ]
    for s, rung in enumerate(at_rung):  # the survivors are the best of the rung
        best = sorted(rung, key=lambda m: (-rung[m]["test_accuracy"], int(m)))[: len(rung) // 2]
        assert sorted(best) == sorted(recorded[s + 1]["members"])
    assert sorted(r["member"] for r in rows) == [0, 1, 2, 3]
    assert sorted(r["epochs"] for r in rows) == [1, 1, 2, 3]
    (survivor,) = [r for r in rows if r["epochs"] == 3]
    assert survivor["params_hash"] == plain[survivor["member"]]["params_hash"]
    assert survivor["test_accuracy"] == plain[survivor["member"]]["test_accuracy"]
    assert survivor["overrides"] == plain[survivor["member"]]["overrides"]
    stopped = [r for r in rows if r["epochs"] == 1]
    assert all(r["params_hash"] != plain[r["member"]]["params_hash"] for r in stopped)


def test_halving_rebuilds_one_program_from_the_survivors_of_several(dataset, tmp_path):
    """With 2 members per program, the 2 survivors of rung 1 (from whichever programs) become
    one program; their numbers are those of the same members run without halving, within
    float32 rounding (members share a program differently)."""
    config = _config(dataset, layout="unroll", epochs=2)
    config.sweep.max_members = 2
    halving = search.Search(SPACE, members=4, seed=1, schedule=search.Halving(1, 2))
    rows = {r["member"]: r for r in sweep.fit(config, halving, tmp_path / "halving")}
    plan = json.loads((tmp_path / "halving" / "plan.json").read_text())
    assert plan[0] == [[0, 1], [2, 3]] and len(plan[1]) == 1 and len(plan[1][0]) == 2
    plain = {r["member"]: r for r in sweep.fit(config, search.Search(SPACE, members=4, seed=1),
                                               tmp_path / "plain")}  # fmt: skip
    for m in plan[1][0]:
        assert rows[m]["epochs"] == 2
        assert rows[m]["test_loss"] == pytest.approx(plain[m]["test_loss"], rel=1e-4)


def test_a_pbt_member_that_copies_a_twin_without_exploring_becomes_it(dataset, tmp_path):
    """Every member of a search shares config.seed, so the same data order: a member that takes
    another's state with perturb (1.0,) and no resampling trains on as an exact copy of it, so
    it ends with its source's params bit for bit; its lineage says whom it copied and when."""
    config = _config(dataset)
    pbt = search.PBT(interval=1, fraction=0.25, perturb=(1.0,), resample=0.0)
    found = sweep.fit(config, search.Search(SPACE, members=4, seed=1, schedule=pbt), tmp_path / "p")
    rows = {r["member"]: r for r in found}
    recorded = json.loads((tmp_path / "p" / "stages.json").read_text())
    assert [st["epochs"] for st in recorded] == [[0, 1], [1, 2], [2, 3]]
    copies = {int(m): v["from"] for m, v in recorded[2]["members"].items() if v["from"] is not None}
    assert len(copies) == 1  # round(0.25 * 4): one member replaced per step
    ((m, source),) = copies.items()
    assert rows[m]["params_hash"] == rows[source]["params_hash"]
    assert rows[m]["overrides"] == rows[source]["overrides"]
    assert rows[m]["lineage"][-1] == {
        "epoch": 2,
        "from": source,
        "overrides": rows[source]["overrides"],
    }
    assert all(r["epochs"] == 3 for r in rows.values())


STAGED_FILE = """
from configs import sweep_smoke
from cnnjax.sweeps import search

def get_config():
    config = sweep_smoke.get_config()
    config.train.epochs = 3
    config.sweep.layout = "sequential"
    return config

def get_sweep():
    space = {
        "optim.learning_rate": search.LogUniform(0.01, 0.3),
        "train.label_smoothing": search.Uniform(0.0, 0.2),
    }
    return search.Search(space, sampler="random", members=4, seed=1, schedule=search.{schedule})
"""
SCHEDULES = {"halving": "Halving(min_epochs=1, eta=2)", "pbt": "PBT(interval=1, fraction=0.25)"}


@pytest.mark.parametrize(
    "name, kill_at",
    [
        ("halving", "population.checkpoint:2"),  # shard 1 mid-stage: its 2nd member at rung 1
        ("pbt", "sweep.stage:2"),  # shard 1's stage 1 planned, nothing of it trained
        ("pbt", "results.row:1"),  # shard 1 writing its results, the last stage trained
    ],
)
def test_a_staged_sweep_in_shards_killed_and_resumed_merges_to_the_whole_one(
    name, kill_at, dataset, tmp_path
):
    """Run whole, then as 2 shards started together, shard 1 SIGKILLed at a chosen point
    (shard 0 waits at the next stage), resumed, both finished and merged: the same members,
    overrides, lineage and params bit for bit, and the same stages."""
    path = tmp_path / "staged.py"
    path.write_text(STAGED_FILE.replace("{schedule}", SCHEDULES[name]))
    env = dict(os.environ, **compile_cache_env(tmp_path / "jax_cache"))

    def start(workdir, *flags, kill_at=None):
        child = dict(env, CNNJAX_KILL_AT=kill_at) if kill_at else env
        command = sweep_command(dataset, path, workdir, *flags)
        return subprocess.Popen(command, cwd=REPO, env=child, stderr=subprocess.PIPE, text=True)

    whole = start(tmp_path / "whole")
    assert whole.wait(timeout=600) == 0, whole.stderr.read()
    shard0 = start(tmp_path / "sharded", "--shard=0/2")
    killed = start(tmp_path / "sharded", "--shard=1/2", kill_at=kill_at)
    assert killed.wait(timeout=600) == -signal.SIGKILL, killed.stderr.read()
    resumed = start(tmp_path / "sharded", "--shard=1/2", "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    assert shard0.wait(timeout=600) == 0, shard0.stderr.read()
    merge = [
        sys.executable,
        "-m",
        "experiments.sweep",
        f"--workdir={tmp_path / 'sharded'}",
        "--merge",
    ]
    merged = subprocess.run(merge, cwd=REPO, env=env, capture_output=True, text=True)
    assert merged.returncode == 0, merged.stderr
    keys = ("member", "overrides", "epochs", "params_hash", "test_accuracy", "lineage")
    key = lambda r: [r.get(k) for k in keys]  # noqa: E731
    want = sorted(key(r) for r in results.read_rows(tmp_path / "whole" / "results.jsonl"))
    got = [key(r) for r in results.read_rows(tmp_path / "sharded" / "results.jsonl")]
    assert got == want and len(want) == 4  # the merge in member order
    for i in (0, 1):
        shard = tmp_path / "sharded" / f"shard-{i}-of-2" / "stages.json"
        assert shard.read_text() == (tmp_path / "whole" / "stages.json").read_text()


def test_a_held_out_validation_split_ranks_the_members_instead_of_the_test_split():
    rows = {
        m: {"test_accuracy": t, "validation_accuracy": v, "diverged_at": None, "overrides": {}}
        for m, (t, v) in enumerate([(0.9, 0.5), (0.5, 0.9), (0.7, 0.7), (0.8, 0.6)])
    }
    assert stages.ranked(rows) == [1, 2, 3, 0]
    assert stages.survivors(search.Halving(eta=2), rows) == [1, 2]
    for row in rows.values():
        row["validation_accuracy"] = None  # no split held out: the test accuracy ranks
    assert stages.ranked(rows) == [0, 3, 2, 1]


def test_a_sweep_with_a_validation_split_reports_both(dataset, tmp_path):
    config = _config(dataset, epochs=2)
    config.data.validation_examples = 128
    halving = search.Search(SPACE, members=2, seed=1, schedule=search.Halving(1, 2))
    rows = {r["member"]: r for r in sweep.fit(config, halving, tmp_path / "s")}
    rung = json.loads((tmp_path / "s" / "stages" / "0.json").read_text())
    (survivor,) = [m for m, r in rows.items() if r["epochs"] == 2]
    assert survivor == stages.ranked({int(m): r for m, r in rung.items()})[0]
    for row in rows.values():
        assert 0 <= row["validation_accuracy"] <= 1 and 0 <= row["test_accuracy"] <= 1
        assert row["validation_loss"] > 0
