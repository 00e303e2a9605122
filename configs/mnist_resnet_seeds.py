"""The small residual network (cnnjax.models.RESNET_SMALL) on MNIST, three seeds in one sweep:
the single models' mean ± std, and (python -m experiments.evaluate --ensemble) their ensemble.

    python -m experiments.sweep --config configs/mnist_resnet_seeds.py \\
        --workdir runs/mnist_resnet_seeds
    python -m experiments.evaluate --ensemble --config configs/mnist_resnet_seeds.py \\
        --workdir runs/mnist_resnet_seeds

configs/resnet_small.py's recipe with MNIST's augmentation (shifts of up to 2 pixels, no flips,
no test-time flips), 16 epochs of 937 steps of 64 (README: Training has the measured result;
--config.train.epochs=8 gives its shorter row).
"""

from configs import resnet_small


def get_config():
    config = resnet_small.get_config()
    config.data.name = "mnist"
    config.data.flip = False  # a mirrored digit is another symbol
    config.data.shift = 2
    config.train.eval_flip = False
    config.train.epochs = 16
    return config


def get_sweep():
    """Three seeds of the one setting (initialisation, data order and augmentation)."""
    return [{"seed": [0, 1, 2]}]
