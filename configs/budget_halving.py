"""configs/budget_grid.py's budget spent by successive halving: 18 random members train 1
epoch, the best 6 (on the validation split) go on to epoch 3, the best 2 of those to epoch 4:
18 + 6 x 2 + 2 x 1 = 32 member-epochs.

    python -m experiments.sweep --config configs/budget_halving.py --workdir runs/budget/halving
"""

from cnnjax.sweeps import search
from configs import budget_grid, budget_random

get_config = budget_grid.get_config


def get_sweep():
    return budget_random.searched(18, search.Halving(min_epochs=1, eta=3))
