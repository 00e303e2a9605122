"""Pure cnnjax vs flax.nnx vs flax.linen on a batch of real test images: logits, loss, gradients
and the networks' state (BatchNorm's running statistics), for each network of NETWORKS.

    python -m experiments.compare_flax [--config configs/compare_flax.py] [--config.batch=512]

Prints, per network and mode, one row per framework and quantity (max |flax - pure|, the
tolerance, PASS/FAIL) and exits 1 if any row fails, 2 if the data cannot be found.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import experiments
from cnnjax import flax_models, layers, models
from cnnjax.training import RunError, idx

_CONFIG = experiments.config_file("configs/compare_flax.py")

# (name, spec, train mode): every layer kind with a Flax counterpart. Train mode normalizes by
# the batch's statistics and updates the running ones; eval mode uses those (the state after
# the train-mode batch). Dropout compares in eval mode (Flax derives each layer's key its own
# way; the masks of one key are compared in tests/layers/test_dropout.py).
SMOOTH = (
    models.Conv(16, 3, 2, "SAME"),
    layers.GELU(),
    models.AvgPool(2, padding="SAME", count_include_pad=False),
    models.Conv(16, 3),
    layers.Tanh(),
    layers.GELU(approximate=False),
    layers.GlobalAvgPool(),
    layers.Dropout(0.5),
    models.Dense(10),
)
NETWORKS = (
    ("REFERENCE_CNN", models.REFERENCE_CNN, False),
    ("RESNET_SMALL", models.RESNET_SMALL, True),
    ("RESNET_SMALL", models.RESNET_SMALL, False),
    ("GELU, Tanh, AvgPool, Dropout", SMOOTH, False),
)


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
    print(
        f"data: {config.dataset} (test), batch {len(labels_N)}, seed {config.seed}, "
        f"device {jax.devices()[0]}"
    )
    rows, shape = [], x_NHWC.shape[1:]
    for name, spec, train in NETWORKS:
        params = models.init(jax.random.key(config.seed), spec, shape)
        state = models.init_state(spec, shape)
        if state and not train:  # the running statistics after one train-mode batch
            state = models.batch_apply(params, x_NHWC, spec, state=state, train=True)[1]
        checked = flax_models.parity_report(
            params, spec, x_NHWC, labels_N, state=state, train=train
        )
        print(f"\n{name}, {'train' if train else 'eval'} mode")
        print(flax_models.format_parity(checked))
        rows += checked
    failed = [row for row in rows if not row.passed]
    return 1 if failed else 0


if __name__ == "__main__":
    experiments.run(main)
