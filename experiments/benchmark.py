"""cnnjax's trainer against idiomatic flax.nnx, flax.linen and PyTorch loops, side by side.

    python -m experiments.benchmark                     # ~4 minutes on 2 idle CPU cores
    python -m experiments.benchmark --batch_sizes=128 --methods="cnnjax hand,flax linen"
    python -m experiments.benchmark --time_to_accuracy=runs/fashion_mnist,runs/mnist

Prints the machine, its measured float32 matmul peak, a training table (img/s, min-max, ratio to
the fastest method at each batch size, compile seconds, GFLOP/s and % of the peak, memory) and an
evaluation table, and writes them to --out as results.json and results.md. cnnjax's methods and
the peers named "+ runtime" run under cnnjax.runtime's settings, the other peers as installed
(CNNJAX_UNTUNED=1: none under them). PyTorch rows need `pip install -e .[torch]`.
--time_to_accuracy instead reports, for finished runs, the seconds of training until the test
accuracy first reached --target (default: 91% Fashion-MNIST, 99% MNIST).
"""

from __future__ import annotations

from absl import flags

import experiments
from cnnjax.bench import benchmark, measuring
from cnnjax.training import analysis

_CONFIG = experiments.config_file("configs/default.py", "network, lr, momentum")
_METHODS = flags.DEFINE_list("methods", list(measuring.METHODS), "methods to measure")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["32", "128", "512"], "training batch sizes")
_IMAGES = flags.DEFINE_integer("images", 4096, "images per timed window (at least 2 steps)")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed windows after the first (median reported)")
_EVAL_IMAGES = flags.DEFINE_integer("eval_images", 5000, "images per evaluation window")
_MATMUL = flags.DEFINE_integer("matmul_size", 2048, "n of the n x n matmul that measures peak")
_OUT = flags.DEFINE_string("out", "runs/benchmark", "where results.json and results.md go")
_TTA = flags.DEFINE_list("time_to_accuracy", [], "finished run directories: time to --target")
_TARGET = flags.DEFINE_float("target", None, "test accuracy for --time_to_accuracy")


def main(argv) -> int:
    experiments.begin(argv)
    if _TTA.value:
        rows = [analysis.time_to_accuracy(workdir, _TARGET.value) for workdir in _TTA.value]
        print(analysis.format_time_to_accuracy(rows))
        return 0
    results = benchmark.peers_vs_cnnjax(
        _CONFIG.value,
        methods=_METHODS.value,
        batch_sizes=[int(b) for b in _BATCH_SIZES.value],
        images=_IMAGES.value,
        repeats=_REPEATS.value,
        eval_images=_EVAL_IMAGES.value,
        matmul_n=_MATMUL.value,
    )
    print(benchmark.format_results(results))
    print(f"written to {benchmark.write_results(results, _OUT.value)}")
    return 0


if __name__ == "__main__":
    experiments.run(main)
