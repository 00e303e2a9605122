"""A small residual CNN with BatchNorm and global pooling (cnnjax.models.RESNET_SMALL) on
Fashion-MNIST, trained with the hand-derived backward pass.

    python -m experiments.train --config configs/resnet_small.py --workdir runs/resnet_small

About 10M multiply-adds per image (4x the reference CNN). Its accuracy target is 94.0% within
15 minutes of training on 2 CPU cores; the full-length run has not been measured yet.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.model.spec = "resnet_small"
    config.data.shift = 2  # random translations by up to 2 pixels, and flips
    config.optim.learning_rate = 0.1
    config.optim.weight_decay = 5e-4
    config.train.epochs = 20
    return config
