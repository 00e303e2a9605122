"""A small residual CNN with BatchNorm and global pooling (cnnjax.models.RESNET_SMALL) on
Fashion-MNIST, trained with the hand-derived backward pass; evaluated with test-time flips.

    python -m experiments.train --config configs/resnet_small.py --workdir runs/resnet_small
    python -m experiments.sweep --config configs/resnet_small.py --workdir runs/resnet_small_seeds

About 10M multiply-adds per image (4x the reference CNN), 20 epochs of 937 steps of 64. The
sweep trains seeds 0, 1 and 2 one after another (README: Training has the measured result).
"""

from configs import default


def get_config():
    config = default.get_config()
    config.model.spec = "resnet_small"
    # Shifts by 1 pixel and flips. 10-epoch runs of this config (seed 0, test-time flips) gave
    # 93.83% with shifts of up to 1 pixel, 93.01% with 2, 93.96% with none (but 96.8% on its
    # training batches: it fits them more), 92.48% with 2 and random erasing (data.erase=0.5).
    config.data.shift = 1
    config.train.batch_size = 64  # on 2 CPU cores 64 trains ~8% more images/s than 128
    config.optim.learning_rate = 0.05  # 0.1 at batch 128, scaled with the batch
    config.optim.weight_decay = 5e-4
    config.train.epochs = 20
    config.train.eval_flip = True
    return config


def get_sweep():
    """Three seeds of the one setting: the table's mean ± std over them."""
    return [{"seed": [0, 1, 2]}]
