"""The reference CNN on Fashion-MNIST: the default run.

    python -m experiments.train --config configs/default.py --workdir runs/fashion_mnist

Expect: 92.46% test accuracy after 30 epochs (14,040 steps of 128), 254 s of training on
2 CPU cores (an Intel Xeon, x86_64, jax 0.10.2, CPU), params hash d00e27bc...
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.name = "fashion_mnist"  # or "mnist"
    config.data.source_dir = ""  # the four IDX files; "" = $CNNJAX_DATA_DIR or the usual places
    config.data.tfds_dir = ""  # where TFDS keeps prepared data; "" = TFDS's default
    config.data.shift = 0  # random translation of training images, pixels (0: off)
    config.data.flip = True  # random left-right flips of training images
    config.data.erase = 0.0  # probability of random erasing per training image (augment.py)
    config.data.train_examples = 0  # > 0: train on the first this many examples only
    config.data.validation_examples = 0  # > 0: hold out the last this many training examples;
    # sweeps rank members on them (halving, PBT, TPE) and report test accuracy beside
    config.data.placement = "auto"  # "device" (splits on every device), "host" (streamed), auto

    config.model = ml_collections.ConfigDict()
    config.model.spec = "reference"  # a name in cnnjax.models.SPECS
    config.model.modules = ""  # comma-separated modules imported first: your layers and SPECS

    config.optim = ml_collections.ConfigDict()
    config.optim.learning_rate = 0.05  # peak, after warm-up
    config.optim.momentum = 0.9  # 0: plain SGD
    config.optim.nesterov = True
    config.optim.weight_decay = 5e-4  # L2: wd * params added to the gradient
    config.optim.schedule = "cosine"  # "constant", "step" or "cosine"
    config.optim.warmup_epochs = 1.0  # linear warm-up from 0
    config.optim.decay_epochs = (10, 15)  # "step" schedule: where the rate is multiplied ...
    config.optim.decay_factor = 0.1  # ... by this

    config.train = ml_collections.ConfigDict()
    config.train.epochs = 30
    config.train.batch_size = 128
    config.train.gradients = "hand"  # "hand" (manual backprop), "autodiff" or "custom_vjp"
    config.train.compute_dtype = "float32"  # "bfloat16": mixed precision (params, loss float32)
    config.train.label_smoothing = 0.1
    config.train.steps_per_chunk = 50  # steps between progress updates and metrics writes
    config.train.scan = "auto"  # "yes": each chunk one lax.scan; "auto": yes off the CPU (train.py)
    config.train.eval_batch_size = 1000
    config.train.eval_flip = False  # test-time flips: logits averaged with the mirror image's
    config.train.checkpoints_kept = 3
    config.train.deterministic = True  # GPU: XLA's deterministic ops (bit-exact reruns; slower)
    return config
