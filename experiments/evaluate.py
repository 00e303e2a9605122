"""Evaluate a run's last checkpoint on the test split: accuracy, per-class accuracy, confusion;
or, with --ensemble, a finished sweep's members and their ensemble (cnnjax.sweeps.ensemble).

python -m experiments.evaluate --workdir runs/fashion_mnist
python -m experiments.evaluate --ensemble --config configs/mnist_seeds.py --workdir runs/mnist_seeds
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

import experiments
from cnnjax.sweeps import ensemble, grid
from cnnjax.training import analysis

_WORKDIR = flags.DEFINE_string("workdir", None, "a run directory (or, --ensemble, a sweep's)")
_ENSEMBLE = flags.DEFINE_bool("ensemble", False, "--workdir is a sweep: members and ensemble")
_CONFIG = experiments.config_file(None, "--ensemble: the sweep's config file (get_sweep())")
flags.mark_flag_as_required("workdir")


def main(argv) -> int:
    experiments.begin(argv)
    if not _ENSEMBLE.value:
        print(analysis.evaluation_report(_WORKDIR.value))
        return 0
    if _CONFIG.value is None:
        raise grid.SweepError("--ensemble needs --config, the config file the sweep ran")
    axes = grid.axes_from_file(config_flags.get_config_filename(flags.FLAGS["config"]))
    result = ensemble.evaluate(_CONFIG.value, axes, _WORKDIR.value)
    print(ensemble.format_report(result))
    return 0


if __name__ == "__main__":
    experiments.run(main)
