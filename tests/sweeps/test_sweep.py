"""cnnjax.sweeps.sweep: errors before any work, a sweep member equal to its solo run, resume,
shards and their merge, programs that change shapes."""

import json
import subprocess
import sys

import jax
import pytest

from cnnjax import models, parallel
from cnnjax.sweeps import grid, merging, population, sweep
from cnnjax.training import run
from configs import sweep_lr, sweep_smoke
from tests.builders import REPO, config_for

# A member's final test loss vs its solo run: both train the same numbers, and differ only by
# float32 rounding in how XLA fuses one member inside a population (~1e-7 relative per op over
# 32 steps). A member trained with another's learning rate or seed is off by > 1e-2.
LOSS_RTOL = 1e-4


def sweep_config(dataset, **sweep_fields):
    config = config_for(dataset, epochs=1)
    config.sweep = sweep_smoke.get_config().sweep
    config.sweep.update(sweep_fields)
    return config


AXES = [{"optim.learning_rate": [0.02, 0.1]}, {"seed": [0, 1]}]


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
)
def test_a_bad_sweep_is_an_error_before_anything_runs(axes, message, tmp_path):
    with pytest.raises(grid.SweepError, match=message):
        sweep.fit(sweep_lr.get_config(), axes, tmp_path / "sweep")
    assert not (tmp_path / "sweep").exists()


def test_a_sweep_runs_its_populations_and_each_member_equals_its_solo_run(dataset, tmp_path):
    config = sweep_config(dataset, max_members=3)
    rows = sweep.fit(config, AXES, tmp_path / "sweep")
    assert json.loads((tmp_path / "sweep" / "plan.json").read_text()) == [[[0, 1, 2], [3]]]
    assert [r["member"] for r in rows] == [0, 1, 2, 3]
    assert {"table.txt", "accuracy_vs_learning_rate.png"} <= {
        p.name for p in (tmp_path / "sweep").iterdir()
    }
    for member in (1, 3):  # one from the 3-member program, one alone
        solo = run.fit(
            grid.member_config(config, rows[member]["overrides"]), tmp_path / f"{member}"
        )
        assert rows[member]["test_loss"] == pytest.approx(solo["test_loss"], rel=LOSS_RTOL)
    losses = [r["test_loss"] for r in rows]
    assert len(set(losses)) == 4  # every member trained its own way
    with pytest.raises(grid.SweepError, match="already holds a sweep; pass --resume"):
        sweep.fit(config, AXES, tmp_path / "sweep")


def test_an_interrupted_sweep_resumes_to_the_uninterrupted_results(dataset, tmp_path, monkeypatch):
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
    with pytest.raises(grid.SweepError, match="holds another sweep"):
        sweep.fit(other, AXES, tmp_path / "cut", resume=True)


def results_lines(directory):
    return (directory / "results.jsonl").read_text().splitlines()


def test_shards_run_apart_and_merge_into_one_table(dataset, tmp_path):
    config = sweep_config(dataset)
    with pytest.raises(grid.SweepError, match="no shard-i-of-n"):
        merging.merge(tmp_path / "sweep")
    sweep.fit(config, AXES, tmp_path / "sweep", shard=(1, 2))
    assert len(results_lines(tmp_path / "sweep" / "shard-1-of-2")) == 2  # members 1 and 3
    with pytest.raises(grid.SweepError, match=r"shard 0/2 has not started"):
        merging.merge(tmp_path / "sweep")
    sweep.fit(config, AXES, tmp_path / "sweep", shard=(0, 2))
    merged = merging.merge(tmp_path / "sweep")
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
    command = [
        sys.executable,
        "-m",
        "experiments.sweep",
        f"--config={config}",
        f"--workdir={tmp_path / 'sweep'}",
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "did you mean 'optim.learning_rate'" in done.stderr
    assert not (tmp_path / "sweep").exists()


def test_members_that_change_shapes_train_as_separate_programs(dataset):
    config = sweep_config(dataset)
    overrides = grid.expand(config, [{"train.batch_size": [16, 32]}, {"seed": [0, 1]}])
    configs = {m: grid.member_config(config, o) for m, o in enumerate(overrides)}
    mesh = parallel.make_mesh(jax.local_devices())
    loaded = {sweep._data_key(config): run.make_feeds(config, run.load_splits(config), mesh)}
    settings = dict(grid.sweep_settings(config), layout="sequential")  # "auto" on a CPU
    assert sweep.plan(configs, loaded, settings) == [[0], [1], [2], [3]]
    settings["layout"] = "unroll"  # one program per shape, as many members as fit
    assert sweep.plan(configs, loaded, settings) == [[0, 1], [2, 3]]
    settings["max_members"] = 1
    assert sweep.plan(configs, loaded, settings) == [[0], [1], [2], [3]]
    per_member = grid.member_bytes(
        models.SPECS["reference"], configs[0], 64, loaded[sweep._data_key(config)][0]
    )
    settings.update(max_members=0, memory_budget_mib=per_member / 2**20 * 1.5)  # room for one
    assert sweep.plan(configs, loaded, settings) == [[0], [1], [2], [3]]


def test_a_bad_data_file_stops_the_sweep_before_its_directory_is_claimed(dataset, tmp_path):
    config = sweep_config(dataset)
    config.data.tfds_dir = str(tmp_path / "tfds")  # prepared anew: the official checksums apply
    # the fixture's fake training images fail the official checksum, as a corrupt file would
    with pytest.raises(grid.SweepError, match=r"train-images.*--config\.data\.source_dir=DIR"):
        sweep.fit(config, AXES, tmp_path / "sweep")
    assert not (tmp_path / "sweep").exists()
