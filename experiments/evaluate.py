"""Evaluate a run's last checkpoint on the test split: accuracy, per-class accuracy, confusion.

python -m experiments.evaluate --workdir runs/fashion_mnist
"""

from __future__ import annotations

from absl import flags

import experiments
from cnnjax.training import analysis

_WORKDIR = flags.DEFINE_string("workdir", None, "a run directory made by experiments.train")
flags.mark_flag_as_required("workdir")


def main(argv) -> int:
    experiments.begin(argv)
    print(analysis.evaluation_report(_WORKDIR.value))
    return 0


if __name__ == "__main__":
    experiments.run(main)
