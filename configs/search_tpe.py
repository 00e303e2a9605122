"""A TPE search (Optuna's TPESampler) of the reference CNN on Fashion-MNIST over learning rate,
weight decay and label smoothing: 16 members of 5 epochs, asked 4 at a time, each round from
the results of the rounds before it (cnnjax/sweeps/search.py).

    python -m experiments.sweep --config configs/search_tpe.py --workdir runs/search_tpe

configs/search_sobol.py spends the same budget on a scrambled Sobol sequence.
"""

from cnnjax.sweeps import search
from configs import sweep_lr


def get_config():
    """configs/sweep_lr.py's: the reference CNN for 5 epochs, the sweep section's layout
    ("auto": sequential on CPU, a round's members as one vmapped program elsewhere)."""
    return sweep_lr.get_config()


SPACE = {
    "optim.learning_rate": search.LogUniform(0.005, 0.5),
    "optim.weight_decay": search.LogUniform(1e-5, 1e-2),
    "train.label_smoothing": search.Uniform(0.0, 0.2),
}


def get_sweep():
    """16 members, 4 per round; the first 8 at random (TPE's start-up), then modelled."""
    return search.Search(SPACE, sampler="tpe", members=16, round_size=4, startup=8, seed=0)
