"""The reference CNN on MNIST (the official 10,000-image test split).

    python -m experiments.train --config configs/mnist.py --workdir runs/mnist

Expect: RESULT_MNIST
"""

from configs import default


def get_config():
    config = default.get_config()
    config.data.name = "mnist"
    config.data.flip = False  # a mirrored digit is another symbol
    config.train.epochs = 12
    return config
