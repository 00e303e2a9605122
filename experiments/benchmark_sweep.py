"""Throughput of a sweep's members trained as one program against the same members trained one
after another, side by side in one run (steady state; compile times apart).

    python -m experiments.benchmark_sweep --config configs/sweep_lr.py
    python -m experiments.benchmark_sweep --config configs/sweep_lr.py --layouts=vmap,unroll,map

Prints a table (images per second over all members, median of --repeats windows of --steps steps
per member, min-max beside it, ratio to sequential) and writes it as JSON and markdown.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import jax
from absl import app, flags
from ml_collections import config_flags

import experiments
from cnnjax import benchmark, population, report, sweep

_CONFIG = config_flags.DEFINE_config_file("config", "configs/sweep_lr.py", "a sweep config")
_STEPS = flags.DEFINE_integer("steps", 10, "steps per member in one timed window")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed windows (the median is reported)")
_LAYOUTS = flags.DEFINE_list("layouts", list(population.ONE_PROGRAM), "one-program layouts to time")
_OUT = flags.DEFINE_string("out", "runs/benchmark_sweep", "where the JSON and markdown go")


def main(argv) -> int:
    experiments.begin(argv)
    config = _CONFIG.value
    axes = sweep.axes_from_file(config_flags.get_config_filename(flags.FLAGS["config"]))
    configs = [sweep.member_config(config, o) for o in sweep.expand(config, axes)]
    rows = benchmark.population_vs_sequential(configs, steps=_STEPS.value, repeats=_REPEATS.value,
                                     layouts=_LAYOUTS.value)  # fmt: skip
    machine = f"{platform.machine()}, {jax.devices()[0].device_kind}, jax {jax.__version__}"
    header = ("method", "compile s", "img/s (median)", "min-max", "vs sequential")
    body = [(r["method"], f"{r['compile_s']:.1f}", f"{r['img_per_s']:,.0f}",
             f"{r['img_per_s_min']:,.0f}-{r['img_per_s_max']:,.0f}", f"{r['ratio']:.2f}x")
            for r in rows]  # fmt: skip
    table = report.format_table(header, body, right=(1, 2, 3, 4))
    print(f"{len(configs)} members, batch {config.train.batch_size}, {machine}\n{table}")
    out = Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(dict(machine=machine, rows=rows), indent=2))
    (out / "results.md").write_text(f"{machine}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    app.run(main)
