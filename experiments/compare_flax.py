"""Pure cnnjax vs flax.nnx vs flax.linen on a batch of real test images: logits, loss, gradients.

    python -m experiments.compare_flax [--config configs/compare_flax.py] [--config.batch=512]

Prints one row per framework and quantity (max |flax - pure|, the tolerance, PASS/FAIL) and
exits 1 if any row fails, 2 if the data cannot be found.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import experiments
from cnnjax import flax_models, models
from cnnjax.training import RunError, idx

_CONFIG = experiments.config_file("configs/compare_flax.py")


def test_images(name: str, source_dir):
    """The test split, read from the IDX files where there are any (no TFDS needed), else
    through TFDS (which downloads them)."""
    source = idx.find_source_dir(name, source_dir)
    if source is not None:
        return idx.read_split(name, "test", source)
    from cnnjax.training import data  # TFDS only when it must download

    return data.load(name, "test")


def main(argv) -> int:
    experiments.begin(argv)
    config = _CONFIG.value
    if config.batch < 1:
        raise RunError(f"config.batch must be >= 1, got {config.batch}: pass --config.batch=N")
    images_NHWC, labels_N = test_images(config.dataset, config.source_dir or None)
    x_NHWC = jnp.asarray(idx.normalize(images_NHWC[: config.batch]))
    labels_N = jnp.asarray(labels_N[: config.batch])
    init_key = jax.random.key(config.seed)
    params = models.init(init_key, models.REFERENCE_CNN, models.REFERENCE_INPUT_SHAPE)
    rows = flax_models.parity_report(params, models.REFERENCE_CNN, x_NHWC, labels_N)

    print(
        f"data: {config.dataset} (test), batch {len(labels_N)}, seed {config.seed}, "
        f"device {jax.devices()[0]}"
    )
    print(flax_models.format_parity(rows))
    failed = [row for row in rows if not row.passed]
    return 1 if failed else 0


if __name__ == "__main__":
    experiments.run(main)
