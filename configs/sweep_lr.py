"""A learning-rate x seed sweep of the reference CNN on Fashion-MNIST: 8 members, one after
another on a CPU and as one program (a population; see cnnjax/sweeps/population.py) elsewhere.

    python -m experiments.sweep --config configs/sweep_lr.py --workdir runs/sweep_lr

Each member is configs/default.py shortened to 5 epochs, with its own learning rate and seed.
"""

import ml_collections

from configs import default


def get_config():
    config = default.get_config()
    config.train.epochs = 5
    config.sweep = ml_collections.ConfigDict()
    config.sweep.layout = "auto"  # "vmap", "unroll", "map", "sequential"; auto: sequential on
    # CPU, else vmap
    config.sweep.max_members = 0  # most members in one program (0: as many as fit in memory)
    config.sweep.memory_budget_mib = 0  # device memory for one program (0: half of what is free)
    return config


def get_sweep():
    """Axes multiply; the fields inside one axis are zipped (see cnnjax/sweeps/grid.py)."""
    return [
        {"optim.learning_rate": [0.05, 0.1, 0.2, 0.4]},
        {"seed": [0, 1]},
    ]
