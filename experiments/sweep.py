"""Run a hyperparameter sweep from a config file that defines get_sweep() (grid axes, or a
search.Search of ranges and a sampler), or merge a sharded one.

    python -m experiments.sweep --config configs/sweep_lr.py --workdir runs/sweep_lr
    python -m experiments.sweep --config configs/sweep_lr.py --workdir runs/s --shard 0/2
    python -m experiments.sweep --workdir runs/s --merge        # once every shard has finished
    python -m experiments.sweep --config configs/search_tpe.py --workdir runs/search_tpe
    python -m experiments.sweep --config configs/budget_halving.py --workdir runs/halving  # _pbt

Members that differ only in numbers (learning rate, momentum, weight decay, label smoothing,
seed) train together as one program. A killed sweep continues with --resume. The shards of a
TPE, halving or PBT sweep run at the same time and wait for each other at each stage.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

import experiments
from cnnjax.sweeps import grid, merging, results, sweep

_CONFIG = experiments.config_file(None, "a config file with get_sweep()")
_WORKDIR = flags.DEFINE_string("workdir", None, "sweep directory (created; never overwritten)")
_SHARD = flags.DEFINE_string("shard", "0/1", "i/n: run the i-th of n disjoint parts (0-based)")
_RESUME = flags.DEFINE_bool("resume", False, "continue the sweep in --workdir")
_MERGE = flags.DEFINE_bool("merge", False, "assemble the finished shards in --workdir")
flags.mark_flag_as_required("workdir")


def main(argv) -> int:
    config = _CONFIG.value
    experiments.begin(argv, deterministic=config is None or config.train.deterministic)
    if _MERGE.value:
        rows, shard = merging.merge(_WORKDIR.value), (0, 1)
    elif _CONFIG.value is None:
        raise grid.SweepError("--config is required (a config file with get_sweep())")
    else:
        axes = grid.axes_from_file(config_flags.get_config_filename(flags.FLAGS["config"]))
        shard = grid.parse_shard(_SHARD.value)
        rows = sweep.fit(_CONFIG.value, axes, _WORKDIR.value, shard=shard, resume=_RESUME.value)
    if shard[1] > 1:
        print(
            f"shard {shard[0]}/{shard[1]}: {len(rows)} members finished; once all shards are, "
            f"run: python -m experiments.sweep --workdir {_WORKDIR.value} --merge"
        )
        return 0
    print(results.settings_table(results.settings_summary(rows)))
    print(f"sweep directory: {_WORKDIR.value}")
    return 0


if __name__ == "__main__":
    experiments.run(main)
