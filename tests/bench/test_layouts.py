"""cnnjax.bench.layouts: a row per layout, consistent with each other (not their speed); the
table; the sweep comparison's files."""

import json

import pytest

from cnnjax.bench import layouts
from cnnjax.sweeps import grid
from configs import sweep_smoke


def test_population_vs_sequential_rows():
    config = sweep_smoke.get_config()
    config.train.batch_size = 4
    axes = [{"optim.learning_rate": [0.01, 0.1]}]
    configs = [grid.member_config(config, o) for o in grid.expand(config, axes)]
    rows = layouts.population_vs_sequential(
        configs, steps=2, repeats=2, layouts=("unroll", "vmap"), examples=64
    )
    assert [r["method"] for r in rows] == [
        "sequential",
        "population (unroll)",
        "population (vmap)",
    ]
    assert rows[0]["ratio"] == pytest.approx(1.0)
    for r in rows:
        assert r["members"] == 2 and r["batch"] == 4 and r["compile_s"] > 0
        assert 0 < r["img_per_s_min"] <= r["img_per_s"] <= r["img_per_s_max"]
        assert r["ratio"] == pytest.approx(r["img_per_s"] / rows[0]["img_per_s"])


def test_the_layout_table_formats_each_number():
    rates = dict(img_per_s=12345.6, img_per_s_min=9999.4, img_per_s_max=20000.4)
    row = dict(method="population (vmap)", compile_s=1.3, **rates, ratio=2.0)
    lines = layouts.format_layouts([row]).splitlines()
    assert lines[0].split()[:2] == ["method", "compile"]
    assert lines[-1].split() == ["population", "(vmap)", "1.3", "12,346", "9,999-20,000", "2.00x"]


def test_compare_layouts_prints_and_writes_the_same_table(tmp_path):
    config = sweep_smoke.get_config()
    config.train.batch_size = 4
    axes = [{"optim.learning_rate": [0.01, 0.1]}]
    text = layouts.compare_layouts(
        config, axes, steps=2, repeats=1, layouts=["unroll"], out=tmp_path / "out"
    )
    first, table = text.split("\n", 1)
    assert first.startswith("2 members, batch 4, ")
    recorded = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["method"] for r in recorded["rows"]] == ["sequential", "population (unroll)"]
    assert first.endswith(recorded["machine"])
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert markdown == f"{recorded['machine']}\n\n{table}\n"
