"""Sweeps compared at one budget of member-epochs, over seeds: each config run once per seed
(resumed where it stopped), then a table and a plot of the best model's test accuracy against
member-epochs spent (cnnjax.sweeps.comparison).

    python -m experiments.compare_sweeps                      # grid, random, halving, PBT; 3 seeds
    python -m experiments.compare_sweeps --seeds=0 --workdir=runs/budget_one
"""

from __future__ import annotations

from absl import flags

import experiments
from cnnjax.sweeps import comparison

NAMES = ("grid", "random", "halving", "pbt")
_CONFIGS = flags.DEFINE_list(
    "configs",
    [f"configs/budget_{n}.py" for n in NAMES],
    "sweep config files; the first is the reference",
)
_SEEDS = flags.DEFINE_list(
    "seeds", ["0", "1", "2"], "comparison seeds (config.seed and a search's seed)"
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/budget", "where each sweep and the report go")


def main(argv) -> int:
    experiments.begin(argv)
    paths = {
        path.split("/")[-1].removesuffix(".py").removeprefix("budget_"): path
        for path in _CONFIGS.value
    }
    curves = comparison.run(paths, [int(s) for s in _SEEDS.value], _WORKDIR.value)
    print(comparison.write_report(_WORKDIR.value, curves, reference=next(iter(paths))))
    print(f"comparison: {_WORKDIR.value}/comparison.md, comparison.png")
    return 0


if __name__ == "__main__":
    experiments.run(main)
