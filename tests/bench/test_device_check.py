"""cnnjax.bench.device_check in a tiny form on the CPU: every part runs into one folder, a failing
part is recorded while the others run, bad input is one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cnnjax.bench import device_check
from cnnjax.training import idx
from configs import device_check as device_check_config
from tests.builders import REPO, config_for


def tiny(dataset):
    """configs/device_check.py cut to seconds of work on generated data."""
    config = device_check_config.get_config()
    config.gradcheck.update(num_random_specs=0, layer_cases=1, dtypes=("float32",))
    config.parity.batch = 8
    config.run = config_for(dataset, epochs=1)
    config.benchmark.update(
        methods=("cnnjax hand",),
        batch_sizes=(8,),
        images=16,
        repeats=1,
        eval_images=100,
        matmul_n=128,
    )
    config.sweep.base.train.batch_size = 4
    config.sweep.update(members=2, layouts=("unroll",), steps=2, repeats=1)
    return config


@pytest.fixture
def no_real_mnist(monkeypatch, tmp_path):
    monkeypatch.delenv(idx.ENV_VAR, raising=False)
    monkeypatch.setattr(idx.Mnist, "DEFAULT_SOURCE", tmp_path / "none")


@pytest.mark.slow
def test_every_part_runs_into_one_folder(dataset, tmp_path, no_real_mnist):
    results = device_check.run_parts(tiny(dataset), tmp_path / "out", progress=lambda line: None)
    parts = results["parts"]
    assert list(parts) == list(device_check.PARTS)
    assert all(done["ok"] for done in parts.values()), {p: d.get("error") for p, d in parts.items()}
    assert device_check.all_passed(results)
    assert parts["gradcheck"]["failed"] == 0 and parts["gradcheck"]["checks"] > 20
    assert parts["parity"]["passed"] == parts["parity"]["rows"] == 20
    assert parts["parity"]["data"] == "random images"  # no IDX files: the same arithmetic
    assert parts["train"]["test_accuracy"] > 0.3 and parts["train"]["environment"]["backend"]
    assert [r["method"] for r in parts["benchmark"]["train"]] == ["cnnjax hand"]
    assert [r["method"] for r in parts["sweep"]["rows"]] == ["sequential", "population (unroll)"]
    out = tmp_path / "out"
    recorded = json.loads((out / "device_check.json").read_text())
    assert recorded["environment"]["backend"] == "cpu" and set(recorded["parts"]) == set(parts)
    markdown = (out / "device_check.md").read_text()
    assert all(f"## {part} (" in markdown for part in device_check.PARTS)
    assert (out / "train" / "summary.json").exists()
    assert (out / "benchmark" / "results.json").exists()


def test_a_failing_part_is_recorded_and_the_others_run(dataset, tmp_path, no_real_mnist):
    config = tiny(dataset)
    config.parts = "train,parity"
    config.run.model.spec = "no-such-network"
    results = device_check.run_parts(config, tmp_path / "out", progress=lambda line: None)
    train = results["parts"]["train"]
    assert not train["ok"] and "no-such-network" in train["error"]
    assert results["parts"]["parity"]["ok"] and not device_check.all_passed(results)
    assert "FAILED: RunError" in (tmp_path / "out" / "device_check.md").read_text()


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("results of another check")
    for args, message in (
        (["--config.parts=gradcheck,sweeps"], "unknown parts ['sweeps']"),
        ([f"--out={tmp_path / 'full'}"], "is not empty; choose a new --out"),
    ):
        command = [sys.executable, "-m", "experiments.device_check", f"--out={tmp_path / 'new'}"]
        done = subprocess.run(
            [*command, *args], cwd=REPO, capture_output=True, text=True, timeout=300
        )
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
        assert lines[0].startswith("error: ") and message in lines[0]
    assert (tmp_path / "full" / "x").read_text() == "results of another check"
    assert not (tmp_path / "new").exists()
