"""Per-example gradient norms and losses of a trained run over its test split.

    python -m experiments.per_example --workdir runs/fashion_mnist

Writes per_example.npz, grad_norms.png (a histogram) and hardest.png (the highest-loss test
images with their true and predicted classes) into the run directory, and prints a summary.
"""

from __future__ import annotations

from absl import flags

import experiments
from cnnjax.output import tables
from cnnjax.training import analysis

_WORKDIR = flags.DEFINE_string("workdir", None, "a run directory made by experiments.train")
_TOP = flags.DEFINE_integer("top", 16, "how many of the highest-loss examples to show")
flags.mark_flag_as_required("workdir")


def main(argv) -> int:
    experiments.begin(argv)
    summary = analysis.per_example_report(_WORKDIR.value, top=_TOP.value)
    print(tables.summary_table(summary))
    return 0


if __name__ == "__main__":
    experiments.run(main)
