"""cnnjax.benchmark: the side-by-side rows are complete and consistent (not their speed); FLOP
counts by hand; time to accuracy from a run's metrics."""

import json

import numpy as np
import pytest

from cnnjax import benchmark, models, report, sweep
from cnnjax.models import Conv, Dense, Flatten, MaxPool, ReLU
from configs import default, sweep_smoke


def test_population_vs_sequential_rows():
    config = sweep_smoke.get_config()
    config.train.batch_size = 4
    configs = [sweep.member_config(config, o)
               for o in sweep.expand(config, [{"optim.learning_rate": [0.01, 0.1]}])]  # fmt: skip
    rows = benchmark.population_vs_sequential(configs, steps=2, repeats=2,
                                              layouts=("unroll", "vmap"), examples=64)  # fmt: skip
    assert [r["method"] for r in rows] == [
        "sequential", "population (unroll)", "population (vmap)"
    ]  # fmt: skip
    assert rows[0]["ratio"] == pytest.approx(1.0)
    for r in rows:
        assert r["members"] == 2 and r["batch"] == 4 and r["compile_s"] > 0
        assert 0 < r["img_per_s_min"] <= r["img_per_s"] <= r["img_per_s_max"]
        assert r["ratio"] == pytest.approx(r["img_per_s"] / rows[0]["img_per_s"])


# --------------------------------------------------------------------------- cnnjax vs its peers


def test_flops_counted_by_hand():
    spec = (Conv(2, 3), ReLU(), MaxPool(2), Flatten(), Dense(3))
    # conv 6x6x1 -> 4x4x2: 4*4*2 outputs of 3*3*1 MACs = 288; pool -> 2x2x2 = 8; dense 8*3 = 24
    assert benchmark.flops_per_image(spec, (6, 6, 1)) == dict(forward=2 * 312, train=6 * 312)
    # stride 2, SAME: 5x5x2 -> 3x3x4, each of 3*3*2 MACs
    strided = (Conv(4, 3, stride=2, padding="SAME"),)
    assert benchmark.flops_per_image(strided, (5, 5, 2))["forward"] == 2 * 3 * 3 * 4 * 18
    # the reference net: 194,688 + 2,230,272 + 204,800 + 1,280 MACs (the issue's ~15.8 MFLOP)
    flops = benchmark.flops_per_image(models.REFERENCE_CNN, models.REFERENCE_INPUT_SHAPE)
    assert flops == dict(forward=5_262_080, train=15_786_240)


def _check_relative(rows, key):
    for r in rows:
        assert 0 < r["img_per_s_min"] <= r["img_per_s"] <= r["img_per_s_max"]
        fastest = max(s["img_per_s"] for s in rows if s.get("batch") == r.get("batch"))
        assert r["ratio"] == pytest.approx(r["img_per_s"] / fastest)
        assert r["peak_fraction"] == pytest.approx(r["gflop_per_s"] / key)
        assert np.isfinite(r["compile_s"])


@pytest.mark.slow  # six measuring processes, each starting jax
def test_peers_vs_cnnjax_rows_are_complete_and_consistent(tmp_path):
    methods, batches = ("cnnjax hand", "flax linen", "flax linen + runtime"), (4, 8)
    results = benchmark.peers_vs_cnnjax(
        default.get_config(), methods=methods, batch_sizes=batches, images=8, repeats=2,
        eval_images=100, matmul_n=128, progress=lambda line: None,
    )  # fmt: skip
    assert results["notes"] == []
    rows, peak = results["train"], results["matmul"]["gflop_per_s"]
    assert [(r["method"], r["batch"]) for r in rows] == [(m, b) for b in batches for m in methods]
    _check_relative(rows, peak)
    for b in batches:
        assert max(r["ratio"] for r in rows if r["batch"] == b) == pytest.approx(1.0)
    tuned = {
        "platform": "cpu",
        "xla_cpu_flag": "set",
        "keep_freed_memory": "set",
    }  # fresh processes
    assert [r["runtime"] for r in rows[:3]] == [tuned, {}, tuned]
    for r in rows:
        assert r["steps"] == 2 and np.isfinite(r["loss"])
        assert r["gflop_per_s"] == pytest.approx(r["img_per_s"] * 15_786_240 / 1e9)
        assert 0 < r["rss_growth_mib"] < r["peak_rss_mib"] and r["load_average"] >= 0
    assert [r["method"] for r in results["eval"]] == list(methods)
    _check_relative(results["eval"], peak)
    assert results["machine"]["cores"] >= 1 and results["machine"]["jax"]
    table = benchmark.format_results(results)
    assert all(m in table for m in methods) and "vs fastest" in table
    out = benchmark.write_results(results, tmp_path / "bench")
    assert json.loads((out / "results.json").read_text())["train"] == rows
    assert "| cnnjax hand |" in (out / "results.md").read_text()


def test_missing_torch_is_a_note_not_an_error(monkeypatch):
    monkeypatch.setattr(benchmark, "_torch_available", lambda: False)
    results = benchmark.peers_vs_cnnjax(default.get_config(), methods=benchmark.TORCH_METHODS,
                                        batch_sizes=(4,), matmul_n=64, progress=None)  # fmt: skip
    assert results["train"] == [] and results["notes"] == [benchmark.TORCH_MISSING]
    assert "pip install -e .[torch]" in benchmark.format_results(results)


def test_cnnjax_and_the_named_peers_run_tuned_unless_untuned_is_asked(monkeypatch):
    monkeypatch.delenv("CNNJAX_UNTUNED", raising=False)
    assert [benchmark.tuned(m) for m in benchmark.METHODS] == [
        m.startswith("cnnjax") or m.endswith(" + runtime") for m in benchmark.METHODS
    ]
    assert benchmark.tuned("pytorch eager + runtime") and not benchmark.tuned("pytorch eager")
    monkeypatch.setenv("CNNJAX_UNTUNED", "1")
    assert not any(benchmark.tuned(m) for m in benchmark.METHODS)


def test_unknown_methods_are_rejected():
    with pytest.raises(ValueError, match="unknown methods"):
        benchmark.peers_vs_cnnjax(default.get_config(), methods=("jax",), matmul_n=64)
    with pytest.raises(ValueError, match="method must be one of"):
        benchmark.measure("jax", 4, default.get_config(), steps=2, repeats=1, eval_images=10,
                          evaluate=False)  # fmt: skip


# --------------------------------------------------------------------------- time to accuracy


def _run_dir(tmp_path, dataset, epochs):
    """A finished run's files as cnnjax.run writes them: (seconds, test_accuracy) per epoch."""
    workdir = tmp_path / dataset
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({"data": {"name": dataset}}))
    with report.MetricsWriter(workdir / "metrics.jsonl") as writer:
        for e, (seconds, accuracy) in enumerate(epochs, start=1):
            writer.write(kind="step", step=10 * e, epoch=e, loss=0.5)
            writer.write(kind="epoch", step=10 * e, epoch=e, test_accuracy=accuracy,
                         seconds=seconds)  # fmt: skip
    return workdir


def test_time_to_accuracy_sums_epoch_seconds_to_the_first_epoch_at_target(tmp_path):
    workdir = _run_dir(tmp_path, "fashion_mnist", [(30.0, 0.85), (20.0, 0.9105), (25.0, 0.905)])
    got = benchmark.time_to_accuracy(workdir)  # fashion_mnist: 91%
    assert got["reached"] and got["epoch"] == 2 and got["seconds"] == pytest.approx(50.0)
    assert got["target"] == 0.91 and got["epochs"] == 3
    assert got["total_seconds"] == pytest.approx(75.0)
    assert benchmark.time_to_accuracy(workdir, target=0.85)["seconds"] == pytest.approx(30.0)
    assert "fashion_mnist" in benchmark.format_time_to_accuracy([got])


def test_time_to_accuracy_never_reached(tmp_path):
    workdir = _run_dir(tmp_path, "mnist", [(10.0, 0.97), (10.0, 0.9899)])
    got = benchmark.time_to_accuracy(workdir)  # mnist: 99%
    assert not got["reached"] and got["epoch"] is None and got["seconds"] is None
    assert got["best_accuracy"] == pytest.approx(0.9899) and got["target"] == 0.99
    assert "never" in benchmark.format_time_to_accuracy([got])
    with pytest.raises(ValueError, match="no default target"):
        benchmark.time_to_accuracy(_run_dir(tmp_path, "cifar", [(1.0, 0.5)]))
