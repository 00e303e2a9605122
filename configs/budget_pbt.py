"""configs/budget_grid.py's budget spent by population based training: 8 random members of 4
epochs; after each epoch the worst 2 (on the validation split) take the state of one of the
best 2 and perturb its numbers (x0.8 or x1.25, or a fresh draw with probability 1/4).

    python -m experiments.sweep --config configs/budget_pbt.py --workdir runs/budget/pbt
"""

from cnnjax.sweeps import search
from configs import budget_grid, budget_random

get_config = budget_grid.get_config


def get_sweep():
    return budget_random.searched(
        8, search.PBT(interval=1, fraction=0.25, perturb=(0.8, 1.25), resample=0.25)
    )
