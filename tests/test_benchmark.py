"""cnnjax.benchmark: the side-by-side rows are complete and consistent (not their speed)."""

import pytest

from cnnjax import benchmark, sweep
from configs import sweep_smoke


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
