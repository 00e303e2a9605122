"""Where one training step's time goes, operation by operation (cnnjax.bench.profiling).

    python -m experiments.profile_step                       # hand-derived gradients, batch 128
    python -m experiments.profile_step --gradients=autodiff --batch_size=32

Prints the compiled step's operations in the order they ran, each with its share of the step's
wall-clock time (waits charged to the convolution in flight), its output shape and the layer
that shape belongs to, then the time by layer.
"""

from __future__ import annotations

from absl import flags

import experiments
from cnnjax.bench import profiling
from cnnjax.training import train

_CONFIG = experiments.config_file("configs/default.py", "network, lr, momentum")
_GRADIENTS = flags.DEFINE_enum("gradients", "hand", train.GRADIENTS, "how the step differentiates")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "training batch size")
_STEPS = flags.DEFINE_integer("steps", 10, "traced steps (the median is reported)")


def main(argv) -> int:
    experiments.begin(argv)
    result = profiling.profile_step(
        _CONFIG.value, gradients=_GRADIENTS.value, batch_size=_BATCH_SIZE.value, steps=_STEPS.value
    )
    print(profiling.format_profile(result))
    return 0


if __name__ == "__main__":
    experiments.run(main)
