"""Train a network from a config: progress, metrics, checkpoints every epoch, plots at the end.

    python -m experiments.train --config configs/default.py --workdir runs/fashion_mnist
    python -m experiments.train --config configs/default.py --workdir runs/x --config.seed=1
    python -m experiments.train --config configs/default.py --workdir runs/x --resume

A killed run continues from its last checkpoint with --resume (same config) and ends with the
params an uninterrupted run ends with, bit for bit.
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

import experiments
from cnnjax import report, run

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py")
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (created; never overwritten)")
_RESUME = flags.DEFINE_bool("resume", False, "continue the run in --workdir from its checkpoint")
flags.mark_flag_as_required("workdir")


def main(argv) -> int:
    experiments.begin(argv)
    try:
        summary = run.fit(_CONFIG.value, _WORKDIR.value, resume=_RESUME.value)
    except run.RunError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    rows = [(k, f"{v:.4f}" if isinstance(v, float) else str(v))
            for k, v in summary.items() if not isinstance(v, dict)]  # fmt: skip
    print(report.format_table(("summary", ""), rows))
    print(f"run directory: {_WORKDIR.value}")
    return 0


if __name__ == "__main__":
    app.run(main)
