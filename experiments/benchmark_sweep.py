"""Throughput of a sweep's members trained as one program against the same members trained one
after another, side by side in one run (steady state; compile times apart).

    python -m experiments.benchmark_sweep --config configs/sweep_lr.py
    python -m experiments.benchmark_sweep --config configs/sweep_lr.py --layouts=vmap,unroll,map

Prints a table (images per second over all members, median of --repeats windows of --steps steps
per member, min-max beside it, ratio to sequential) and writes it as JSON and markdown.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

import experiments
from cnnjax.bench import layouts
from cnnjax.sweeps import grid, population

_CONFIG = experiments.config_file("configs/sweep_lr.py", "a sweep config")
_STEPS = flags.DEFINE_integer("steps", 10, "steps per member in one timed window")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed windows (the median is reported)")
_LAYOUTS = flags.DEFINE_list("layouts", list(population.ONE_PROGRAM), "one-program layouts to time")
_OUT = flags.DEFINE_string("out", "runs/benchmark_sweep", "where the JSON and markdown go")


def main(argv) -> int:
    experiments.begin(argv)
    axes = grid.axes_from_file(config_flags.get_config_filename(flags.FLAGS["config"]))
    text = layouts.compare_layouts(
        _CONFIG.value,
        axes,
        steps=_STEPS.value,
        repeats=_REPEATS.value,
        layouts=_LAYOUTS.value,
        out=_OUT.value,
    )
    print(text)
    return 0


if __name__ == "__main__":
    experiments.run(main)
