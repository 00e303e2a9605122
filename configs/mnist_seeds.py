"""The reference CNN on MNIST with a longer recipe, three seeds in one sweep: the single models'
mean ± std, and (python -m experiments.evaluate --ensemble) the three as one ensemble.

    python -m experiments.sweep --config configs/mnist_seeds.py --workdir runs/mnist_seeds
    python -m experiments.evaluate --ensemble --workdir runs/mnist_seeds

configs/mnist.py (shifts of up to 2 pixels, no flips) trained 30 epochs instead of 12: the
cosine schedule spends longer at small rates.
"""

from configs import mnist


def get_config():
    config = mnist.get_config()
    config.train.epochs = 30
    return config


def get_sweep():
    """Three seeds of the one setting (initialisation, data order and augmentation)."""
    return [{"seed": [0, 1, 2]}]
