"""cnnjax.bench.benchmark: the side-by-side rows are complete and consistent (not their speed);
a failing measuring process is a note; the tables and files."""

import json

import numpy as np
import pytest

from cnnjax.bench import benchmark, measuring
from configs import default


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
        default.get_config(),
        methods=methods,
        batch_sizes=batches,
        images=8,
        repeats=2,
        eval_images=100,
        matmul_n=128,
        progress=lambda line: None,
    )
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
    results = benchmark.peers_vs_cnnjax(
        default.get_config(),
        methods=measuring.TORCH_METHODS,
        batch_sizes=(4,),
        matmul_n=64,
        progress=None,
    )
    assert results["train"] == [] and results["notes"] == [benchmark.TORCH_MISSING]
    assert "pip install -e .[torch]" in benchmark.format_results(results)


@pytest.mark.slow  # a process that starts jax and fails
def test_a_failing_measuring_process_is_one_line_naming_the_job():
    config = default.get_config()
    config.model.spec = "no-such-network"
    job = dict(
        method="cnnjax hand",
        batch_size=4,
        config=config.to_dict(),
        steps=2,
        repeats=1,
        eval_images=10,
        evaluate=False,
    )
    got = benchmark._in_own_process(job)
    assert set(got) == {"error"}
    assert got["error"].startswith("cnnjax hand, batch 4: failed (exit 1): ")
    assert "no-such-network" in got["error"]


def test_cnnjax_and_the_named_peers_run_tuned_unless_untuned_is_asked(monkeypatch):
    monkeypatch.delenv("CNNJAX_UNTUNED", raising=False)
    assert [benchmark.tuned(m) for m in measuring.METHODS] == [
        m.startswith("cnnjax") or m.endswith(" + runtime") for m in measuring.METHODS
    ]
    assert benchmark.tuned("pytorch eager + runtime") and not benchmark.tuned("pytorch eager")
    monkeypatch.setenv("CNNJAX_UNTUNED", "1")
    assert not any(benchmark.tuned(m) for m in measuring.METHODS)


def test_unknown_methods_are_rejected():
    with pytest.raises(ValueError, match="unknown methods"):
        benchmark.peers_vs_cnnjax(default.get_config(), methods=("jax",), matmul_n=64)


def _results():
    """peers_vs_cnnjax's results for one method at one batch size, numbers chosen by hand."""
    rates = dict(
        img_per_s=1234.4,
        img_per_s_min=1000.0,
        img_per_s_max=1500.6,
        ratio=1.0,
        compile_s=2.25,
        gflop_per_s=19.5,
        peak_fraction=0.125,
        load_average=1.5,
    )
    machine = dict(
        cpu="a cpu",
        cores=2,
        arch="x86_64",
        jax="0",
        backend="cpu",
        device="cpu",
        flax="0",
        torch=None,
        load_average=0.5,
        load_average_after=1.25,
    )
    return dict(
        machine=machine,
        matmul=dict(n=64, gflop_per_s=156.0, gflop_per_s_median=150.0),
        flops=dict(forward=5_262_080, train=15_786_240),
        settings=dict(repeats=3, images_per_window=4096, eval_images=100, eval_batch=1000),
        train=[
            dict(rates, method="cnnjax hand", batch=32, peak_rss_mib=800.4, rss_growth_mib=99.6)
        ],
        eval=[dict(rates, method="cnnjax hand")],
        notes=["a note"],
        seconds=42.4,
    )


def test_the_tables_show_each_number_as_formatted():
    text = benchmark.format_results(_results())
    assert "torch not installed; load average 0.50 before, 1.25 after" in text
    assert "matmul peak: 156.0 GFLOP/s" in text and "training 15.79 MFLOP" in text
    train_line = next(line for line in text.splitlines() if line.lstrip().startswith("32"))
    cells = ("1,234", "1,000-1,501", "1.00", "2.2", "19.5", "12.5%", "1.5", "800", "100")
    assert train_line.split()[3:] == list(cells)
    assert text.endswith("note: a note\nbenchmark wall time 42 s")
    markdown = benchmark.format_results(_results(), markdown=True)
    assert "| 32 | cnnjax hand | 1,234 | 1,000-1,501 | 1.00 | 2.2 |" in markdown
    assert "| ---: | --- | ---: | ---: |" in markdown  # batch and numbers right, method left
    assert "| --- | ---: |" in markdown  # the evaluation table: method, then numbers
