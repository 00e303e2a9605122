"""configs/budget_grid.py's budget of 32 member-epochs spent by random search: 8 members of 4
epochs drawn from log-uniform learning rate and weight decay and uniform label smoothing.

    python -m experiments.sweep --config configs/budget_random.py --workdir runs/budget/random
"""

from cnnjax.sweeps import search
from configs import budget_grid

SPACE = {
    "optim.learning_rate": search.LogUniform(0.005, 0.5),
    "optim.weight_decay": search.LogUniform(1e-5, 1e-2),
    "train.label_smoothing": search.Uniform(0.0, 0.2),
}


def get_config():
    return budget_grid.get_config()


def searched(members: int, schedule=None):
    """A random search of SPACE: this file's, or with a schedule, budget_halving's and _pbt's."""
    return search.Search(SPACE, sampler="random", members=members, seed=0, schedule=schedule)


def get_sweep():
    return searched(8)
