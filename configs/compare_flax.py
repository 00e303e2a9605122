"""Pure cnnjax vs flax.nnx vs flax.linen on real test images: logits, loss and gradients.

    python -m experiments.compare_flax --config configs/compare_flax.py [--config.batch=512]

Expect: 20/20 rows PASS; on CPU every max |diff| is 0 (the same XLA ops in the same order).
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.seed = 0  # of the params init
    config.batch = 256  # test images compared
    config.dataset = "mnist"  # or "fashion_mnist" (cnnjax.training.data.DATASETS)
    config.source_dir = ""  # the four IDX files; "": cnnjax.training.idx.find_source_dir, else TFDS
    return config
