"""A tiny run that exercises the whole pipeline in seconds (tests use it on generated data).

    python -m experiments.train --config configs/smoke.py --workdir /tmp/smoke

Expect: a finished run directory (metrics, checkpoints, plots); the accuracy means nothing.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.train.epochs = 2
    config.train.batch_size = 32
    config.train.steps_per_chunk = 4
    config.train.eval_batch_size = 100
    config.optim.warmup_epochs = 0.0
    return config
