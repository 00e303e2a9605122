"""A brief real sweep (CI runs it; tests use it on generated data): 2 learning rates x 2 seeds
on 4,096 Fashion-MNIST training images, 1 epoch, as one population (the "unroll" layout, so
that the whole sweep and its shards run populations of different sizes even on a CPU).

    python -m experiments.sweep --config configs/sweep_smoke.py --workdir runs/sweep_smoke
"""

from configs import smoke, sweep_lr


def get_config():
    config = smoke.get_config()
    config.train.epochs = 1
    config.sweep = sweep_lr.get_config().sweep
    config.sweep.layout = "unroll"
    return config


def get_sweep():
    return [{"optim.learning_rate": [0.02, 0.1]}, {"seed": [0, 1]}]
