"""Train a network from a config: progress, metrics, checkpoints every epoch, plots at the end.

    python -m experiments.train --config configs/default.py --workdir runs/fashion_mnist
    python -m experiments.train --config configs/default.py --workdir runs/x --config.seed=1
    python -m experiments.train --config configs/default.py --workdir runs/x --resume

A killed run continues from its last checkpoint with --resume (same config) and ends with the
params an uninterrupted run ends with, bit for bit.

Each batch is split over all local devices. Several processes (one per host) train one run
with --coordinator=HOST:PORT (process 0's), --num_processes=N, --process_id=i (or
$CNNJAX_COORDINATOR, ...), or --coordinator=auto under SLURM or Open MPI (one task per GPU).
"""

from __future__ import annotations

from absl import flags

import experiments
from cnnjax import parallel
from cnnjax.training import RunError, run

_CONFIG = experiments.config_file("configs/default.py")
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (created; never overwritten)")
_RESUME = flags.DEFINE_bool("resume", False, "continue the run in --workdir from its checkpoint")
_COORDINATOR = flags.DEFINE_string(
    "coordinator",
    None,
    "HOST:PORT of process 0, 'auto' (SLURM, Open MPI) or '' for one process; "
    "default $CNNJAX_COORDINATOR",
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "default $CNNJAX_NUM_PROCESSES")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "0 .. N-1; default $CNNJAX_PROCESS_ID")
flags.mark_flag_as_required("workdir")


def main(argv) -> int:
    experiments.begin(argv, deterministic=_CONFIG.value.train.deterministic)
    try:
        if parallel.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value):
            print(parallel.describe(), flush=True)
    except ValueError as error:  # flags that do not describe a set of processes
        raise RunError(str(error)) from None
    summary = run.fit(_CONFIG.value, _WORKDIR.value, resume=_RESUME.value)
    if not parallel.is_primary():
        return 0  # process 0 prints the summary
    print(run.format_summary(summary))
    print(f"run directory: {_WORKDIR.value}")
    return 0


if __name__ == "__main__":
    experiments.run(main)
