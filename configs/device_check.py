"""The accelerator check (cnnjax/bench/device_check.py): a short gradient check, Flax parity, a
short MNIST run, the side-by-side training benchmark at batch 128 and 1024 and the sweep layouts.

    python -m experiments.device_wheels --out .device     # here: what the image lacks
    python -m experiments.device_check --out runs/device_check

Sized for a few minutes on one H200 (estimated, not measured yet: see README); a CPU takes far
longer. Every field can be overridden, e.g. --config.parts=gradcheck,parity.
"""

import ml_collections

from configs import default, gradcheck, mnist, sweep_lr


def get_config():
    config = ml_collections.ConfigDict()
    config.parts = "gradcheck,parity,train,benchmark,sweep"  # cnnjax.bench.device_check.PARTS

    config.gradcheck = gradcheck.get_config()
    config.gradcheck.num_random_specs = 4  # random networks per dtype (the full check: 20)
    config.gradcheck.layer_cases = 2  # per layer rule and dtype (the full check: 8)

    config.parity = ml_collections.ConfigDict()
    config.parity.seed = 0
    config.parity.batch = 256  # test images compared
    config.parity.dataset = "mnist"
    config.parity.source_dir = ""  # the IDX files; "": found as cnnjax.training.idx finds them

    config.run = mnist.get_config()  # the short real run: MNIST, 3 epochs
    config.run.train.epochs = 3

    config.benchmark = ml_collections.ConfigDict()
    config.benchmark.base = default.get_config()  # network, learning rate, momentum
    config.benchmark.methods = (
        "cnnjax hand",
        "cnnjax autodiff",
        "flax nnx",
        "flax linen",
        "pytorch eager",
    )
    config.benchmark.batch_sizes = (128, 1024)
    config.benchmark.images = 32768  # per timed window
    config.benchmark.repeats = 3
    config.benchmark.eval_images = 10000
    config.benchmark.matmul_n = 8192  # n of the float32 n x n matmul that measures the peak

    config.sweep = ml_collections.ConfigDict()
    config.sweep.base = sweep_lr.get_config()  # the 8-member learning-rate x seed sweep
    config.sweep.axes = sweep_lr.get_sweep()
    config.sweep.members = 8
    config.sweep.layouts = ("vmap", "unroll")  # besides "sequential", always measured
    config.sweep.steps = 20  # per member per timed window
    config.sweep.repeats = 3
    return config
