"""cnnjax.sweep and cnnjax.results: grids by hand, errors before any work, programs and
populations, a sweep member equal to its solo run, resume, shards and their merge."""

import json
import subprocess
import sys

import jax
import pytest

from cnnjax import models, parallel, population, results, run, sweep
from configs import default, sweep_lr, sweep_smoke
from tests.test_run import REPO, config_for, dataset  # noqa: F401 (dataset is a fixture)

# A member's final test loss vs its solo run: both train the same numbers, and differ only by
# float32 rounding in how XLA fuses one member inside a population (~1e-7 relative per op over
# 32 steps). A member trained with another's learning rate or seed is off by > 1e-2.
LOSS_RTOL = 1e-4


def test_axes_multiply_and_fields_inside_one_axis_zip():
    axes = [{"optim.learning_rate": [0.1, 0.2], "optim.momentum": [0.9, 0.5]}, {"seed": [0, 1, 2]}]
    members = sweep.expand(default.get_config(), axes)
    assert len(members) == 6
    assert members[0] == {"optim.learning_rate": 0.1, "optim.momentum": 0.9, "seed": 0}
    assert members[2] == {"optim.learning_rate": 0.1, "optim.momentum": 0.9, "seed": 2}
    assert members[5] == {"optim.learning_rate": 0.2, "optim.momentum": 0.5, "seed": 2}
    assert len(sweep.expand(sweep_lr.get_config(), sweep_lr.get_sweep())) == 8


@pytest.mark.parametrize(
    "axes, message",
    [
        ([{"optim.learning_rte": [0.1]}], r"did you mean 'optim\.learning_rate'"),
        ([{"optim.learning_rate": ["fast"]}], r"which the config refuses"),
        ([{"optim.learning_rate": [0.1, 0.2], "seed": [0]}], r"equally long"),
        ([{"seed": [0]}, {"seed": [1]}], r"appears in two axes"),
        ([{"seed": [0, 0]}], r"same member twice"),
        ([{"sweep.layout": ["vmap"]}], r"not a field of the config"),
        ([], r"non-empty list of axes"),
    ],
)  # fmt: skip
def test_a_bad_sweep_is_an_error_before_anything_runs(axes, message, tmp_path):
    with pytest.raises(sweep.SweepError, match=message):
        sweep.fit(sweep_lr.get_config(), axes, tmp_path / "sweep")
    assert not (tmp_path / "sweep").exists()


def test_only_numbers_and_seeds_share_a_program():
    base = default.get_config()
    key = sweep.program_key(base)
    for name, value in [("seed", 3), ("optim.learning_rate", 0.3), ("optim.momentum", 0.0),
                        ("optim.weight_decay", 0.0), ("train.label_smoothing", 0.0)]:  # fmt: skip
        assert sweep.program_key(sweep.member_config(base, {name: value})) == key, name
    for name, value in [("train.batch_size", 64), ("train.epochs", 3), ("optim.nesterov", False),
                        ("data.flip", False)]:  # fmt: skip
        assert sweep.program_key(sweep.member_config(base, {name: value})) != key, name


def test_shards_are_disjoint_and_cover_the_sweep():
    assert sweep.parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "1", "a/b", "-1/2"):
        with pytest.raises(sweep.SweepError, match="--shard"):
            sweep.parse_shard(bad)
    parts = [sweep.shard_members(8, (i, 3)) for i in range(3)]
    assert parts == [[0, 3, 6], [1, 4, 7], [2, 5]]
    assert sweep.shard_members(8, (0, 1)) == list(range(8))


def result(member, lr, seed, accuracy, loss=0.5, diverged_at=None):
    return dict(member=member, overrides={"optim.learning_rate": lr, "seed": seed},
                test_accuracy=accuracy, test_loss=loss, diverged_at=diverged_at)  # fmt: skip


def test_settings_table_by_hand():
    rows = [result(0, 0.1, 0, 0.90), result(1, 0.1, 1, 0.92), result(2, 0.1, 2, 0.94),
            result(3, 1.0, 0, 0.10, diverged_at=7), result(4, 1.0, 1, 0.95)]  # fmt: skip
    summary = results.settings_summary(rows)
    assert [s["setting"] for s in summary] == [{"optim.learning_rate": 0.1},
                                               {"optim.learning_rate": 1.0}]  # fmt: skip
    assert summary[0]["test_accuracy"] == pytest.approx((0.92, 0.02))  # std with ddof 1
    assert summary[1]["test_accuracy"] == (0.95, 0.0)  # the diverged member is left out
    assert (summary[1]["members"], summary[1]["diverged"]) == (2, 1)
    assert results.best_setting(summary) == 1
    table = results.settings_table(summary)
    assert "92.00 ± 2.00" in table and "1/2" in table
    assert table.splitlines()[2].rstrip().endswith("*")  # the best row is marked


def sweep_config(dataset, **sweep_fields):  # noqa: F811 (dataset is the fixture's value)
    config = config_for(dataset, epochs=1)
    config.sweep = sweep_smoke.get_config().sweep
    config.sweep.update(sweep_fields)
    return config


AXES = [{"optim.learning_rate": [0.02, 0.1]}, {"seed": [0, 1]}]


def test_a_sweep_runs_its_populations_and_each_member_equals_its_solo_run(dataset, tmp_path):  # noqa: F811
    config = sweep_config(dataset, max_members=3)
    rows = sweep.fit(config, AXES, tmp_path / "sweep")
    assert json.loads((tmp_path / "sweep" / "plan.json").read_text()) == [[0, 1, 2], [3]]
    assert [r["member"] for r in rows] == [0, 1, 2, 3]
    assert {"table.txt", "accuracy_vs_learning_rate.png"} <= {
        p.name for p in (tmp_path / "sweep").iterdir()
    }
    for member in (1, 3):  # one from the 3-member program, one alone
        solo = run.fit(
            sweep.member_config(config, rows[member]["overrides"]), tmp_path / f"{member}"
        )
        assert rows[member]["test_loss"] == pytest.approx(solo["test_loss"], rel=LOSS_RTOL)
    losses = [r["test_loss"] for r in rows]
    assert len(set(losses)) == 4  # every member trained its own way
    with pytest.raises(sweep.SweepError, match="already holds a sweep; pass --resume"):
        sweep.fit(config, AXES, tmp_path / "sweep")


def test_an_interrupted_sweep_resumes_to_the_uninterrupted_results(dataset, tmp_path, monkeypatch):  # noqa: F811
    config = sweep_config(dataset, max_members=2)
    whole = sweep.fit(config, AXES, tmp_path / "whole")
    real_fit, calls = population.fit, []

    def dies_in_the_second_population(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(population, "fit", dies_in_the_second_population)
    with pytest.raises(KeyboardInterrupt):
        sweep.fit(config, AXES, tmp_path / "cut")
    assert len(results_lines(tmp_path / "cut")) == 2  # the first population's members
    monkeypatch.setattr(population, "fit", real_fit)
    resumed = sweep.fit(config, AXES, tmp_path / "cut", resume=True)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "population_seconds"} for r in rows]  # noqa: E731
    assert strip(resumed) == strip(whole)  # params hashes included: bit for bit
    other = sweep_config(dataset, max_members=2)
    other.seed = 5
    with pytest.raises(sweep.SweepError, match="holds another sweep"):
        sweep.fit(other, AXES, tmp_path / "cut", resume=True)


def results_lines(directory):
    return (directory / "results.jsonl").read_text().splitlines()


def test_shards_run_apart_and_merge_into_one_table(dataset, tmp_path):  # noqa: F811
    config = sweep_config(dataset)
    with pytest.raises(sweep.SweepError, match="no shard-i-of-n"):
        sweep.merge(tmp_path / "sweep")
    sweep.fit(config, AXES, tmp_path / "sweep", shard=(1, 2))
    assert len(results_lines(tmp_path / "sweep" / "shard-1-of-2")) == 2  # members 1 and 3
    with pytest.raises(sweep.SweepError, match=r"shard 0/2 has not started"):
        sweep.merge(tmp_path / "sweep")
    sweep.fit(config, AXES, tmp_path / "sweep", shard=(0, 2))
    merged = sweep.merge(tmp_path / "sweep")
    whole = sweep.fit(config, AXES, tmp_path / "whole")
    assert [r["member"] for r in merged] == [0, 1, 2, 3]
    for a, b in zip(merged, whole, strict=True):
        assert a["overrides"] == b["overrides"]
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=LOSS_RTOL)
    assert (tmp_path / "sweep" / "table.txt").exists()


def test_the_command_line_names_a_misspelt_field_and_writes_nothing(tmp_path):
    config = tmp_path / "typo.py"
    config.write_text(
        "from configs import sweep_smoke\n"
        "get_config = sweep_smoke.get_config\n"
        "def get_sweep():\n"
        "    return [{'optim.learnig_rate': [0.1]}]\n"
    )
    command = [sys.executable, "-m", "experiments.sweep", f"--config={config}",
               f"--workdir={tmp_path / 'sweep'}"]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "did you mean 'optim.learning_rate'" in done.stderr
    assert not (tmp_path / "sweep").exists()


def test_two_swept_numbers_draw_a_heat_map_and_one_draws_a_line(tmp_path):
    rows = []
    for i, (lr, wd, seed) in enumerate([(lr, wd, s) for lr in (0.1, 0.2) for wd in (0.0, 1e-4)
                                        for s in (0, 1)]):  # fmt: skip
        rows.append(dict(member=i, overrides={"optim.learning_rate": lr,
                                              "optim.weight_decay": wd, "seed": seed},
                         test_accuracy=0.8 + lr / 10 + seed / 100, test_loss=0.5,
                         diverged_at=None))  # fmt: skip
    table = results.write_report(tmp_path / "grid", rows)
    assert (tmp_path / "grid" / "accuracy_heatmap.png").read_bytes()[:4] == b"\x89PNG"
    assert len(table.splitlines()) == 1 + 4 and "82.50 ± 0.71" in table
    results.write_report(tmp_path / "line", [result(0, 0.1, 0, 0.9), result(1, 0.2, 0, 0.8)])
    assert (tmp_path / "line" / "accuracy_vs_learning_rate.png").exists()


def test_members_that_change_shapes_train_as_separate_programs(dataset):  # noqa: F811
    config = sweep_config(dataset)
    overrides = sweep.expand(config, [{"train.batch_size": [16, 32]}, {"seed": [0, 1]}])
    configs = {m: sweep.member_config(config, o) for m, o in enumerate(overrides)}
    mesh = parallel.make_mesh(jax.local_devices())
    loaded = {sweep._data_key(config): run.make_feeds(config, run.load_splits(config), mesh)}
    settings = dict(sweep.sweep_settings(config), layout="sequential")  # "auto" on a CPU
    assert sweep.plan(configs, loaded, settings) == [[0], [1], [2], [3]]
    settings["layout"] = "unroll"  # one program per shape, as many members as fit
    assert sweep.plan(configs, loaded, settings) == [[0, 1], [2, 3]]
    settings["max_members"] = 1
    assert sweep.plan(configs, loaded, settings) == [[0], [1], [2], [3]]
    per_member = population.member_bytes(
        models.SPECS["reference"], configs[0], 64, loaded[sweep._data_key(config)][0]
    )
    settings.update(max_members=0, memory_budget_mib=per_member / 2**20 * 1.5)  # room for one
    assert sweep.plan(configs, loaded, settings) == [[0], [1], [2], [3]]
