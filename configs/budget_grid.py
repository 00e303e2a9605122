"""A fixed budget of 32 member-epochs (the reference CNN on Fashion-MNIST, 4 epochs at most,
5,000 training images held out for validation) spent by a grid: 2 x 2 x 2 = 8 members of 4
epochs over learning rate, weight decay and label smoothing, each axis at the quartiles (in
log where the range is) of configs/budget_random.py's ranges.

    python -m experiments.sweep --config configs/budget_grid.py --workdir runs/budget/grid
    python -m experiments.compare_sweeps       # this, random, halving and PBT over 3 seeds

configs/budget_random.py, budget_halving.py and budget_pbt.py spend the same budget otherwise.
"""

from configs import sweep_lr


def get_config():
    """configs/sweep_lr.py's (layout "auto") for 4 epochs, the last 5,000 training examples
    held out: every budget_* sweep selects on them and reports test accuracy beside."""
    config = sweep_lr.get_config()
    config.train.epochs = 4
    config.data.validation_examples = 5000
    return config


def get_sweep():
    return [
        {"optim.learning_rate": [0.0158, 0.158]},  # LogUniform(0.005, 0.5)'s quartiles
        {"optim.weight_decay": [5.62e-5, 1.78e-3]},  # LogUniform(1e-5, 1e-2)'s
        {"train.label_smoothing": [0.05, 0.15]},  # Uniform(0, 0.2)'s
    ]
