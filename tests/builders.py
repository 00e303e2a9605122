"""What many test modules build: small specs, configs and learnable synthetic data, fake IDX
files, a run's config on them, a population trained by hand. Fixtures live in conftest.py."""

from __future__ import annotations

import gzip
import hashlib
import struct
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import models, parallel
from cnnjax.sweeps import population
from cnnjax.training import feed, idx, train
from configs import default, smoke

REPO = Path(__file__).resolve().parent.parent

# ----------------------------------------------------------------------- IDX files

SIZES = {"train": 20, "test": 10}  # examples in the fake IDX files


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file as the MNIST distribution writes it: magic 0x0000080<ndim>, dims, uint8."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_dir(directory, *, gz: bool, image_HW=(28, 28)):
    """The four IDX files of a small fake dataset -> (stem -> array, stem -> sha256)."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    arrays, checksums = {}, {}
    for split, (images_stem, labels_stem) in idx.FILES.items():
        n = SIZES[split]
        arrays[images_stem] = rng.integers(0, 256, (n, *image_HW), dtype=np.uint8)
        arrays[labels_stem] = rng.integers(0, 10, (n,), dtype=np.uint8)
    for stem in idx.STEMS:
        raw = idx_bytes(arrays[stem])
        checksums[stem] = hashlib.sha256(raw).hexdigest()
        if gz:  # a gzip wrapper unlike the distribution's (level, mtime): the content still counts
            (directory / f"{stem}.gz").write_bytes(gzip.compress(raw, compresslevel=1, mtime=7))
        else:
            (directory / stem).write_bytes(raw)
    return arrays, checksums


# ------------------------------------------------------------ a small network, learnable data

SMALL_SPEC = (
    models.Conv(4, 3),
    models.ReLU(),
    models.MaxPool(2),
    models.Flatten(),
    models.Dense(3),
)


def synthetic(n=256, seed=0):
    """Learnable uint8 images: class k brightens row band k of a 12x12 image, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n).astype(np.int32)
    images = rng.integers(0, 60, (n, 12, 12, 1)).astype(np.uint8)
    for k in range(3):
        images[labels == k, 4 * k : 4 * k + 4] += 150
    return jnp.asarray(images), jnp.asarray(labels)


def small_config(gradients="autodiff", **train_overrides):
    config = default.get_config()
    config.data.shift, config.data.flip = 1, True
    config.train.gradients = gradients
    config.train.batch_size = 16
    config.train.update(train_overrides)
    return config


def one_device_feed(images, labels, placement="device"):
    """The split fed to the default device (cnnjax.training.feed), on it or from host memory."""
    return feed.make(placement, (images, labels), parallel.make_mesh(jax.devices()[:1]))


def run_steps(config, images, labels, epochs, spec=SMALL_SPEC, placement="device"):
    steps = images.shape[0] // config.train.batch_size
    optimizer = train.make_optimizer(config.optim, steps, epochs)
    state = train.init_state(config.seed, spec, images.shape[1:], optimizer)
    run = train.make_train_steps(
        spec, optimizer, config, one_device_feed(images, labels, placement)
    )
    curve = []
    for epoch in range(epochs):
        idx = train.epoch_indices(state, epoch, images.shape[0], config.train.batch_size)
        state, metrics = run(state, np.asarray(idx))
        curve += list(np.asarray(metrics["loss"]))
    return state, np.array(curve)


# -------------------------------------------------------------- a run on the `dataset` fixture

TRAIN_N, TEST_N = 1024, 200  # the dataset fixture's examples: 32 steps of 32 per epoch


def config_for(dataset, **train):
    config = smoke.get_config()
    config.data.name, config.data.flip = "mnist", False
    config.data.source_dir, config.data.tfds_dir = map(str, dataset)
    config.train.update(train)
    return config


def train_command(dataset, workdir, epochs: int, *extra) -> list[str]:
    """`python -m experiments.train` on the smoke config and the `dataset` fixture's files."""
    source, tfds_dir = dataset
    return [
        sys.executable,
        "-m",
        "experiments.train",
        "--config=configs/smoke.py",
        f"--workdir={workdir}",
        "--config.data.name=mnist",
        "--config.data.flip=False",
        f"--config.data.source_dir={source}",
        f"--config.data.tfds_dir={tfds_dir}",
        f"--config.train.epochs={epochs}",
        *extra,
    ]


def sweep_command(dataset, config_path, workdir, *flags, train_examples: int = 256) -> list[str]:
    """`python -m experiments.sweep` on a sweep config file and the `dataset` fixture's files
    (MNIST-like, no flips, the first `train_examples` training images)."""
    source, tfds_dir = dataset
    return [
        sys.executable,
        "-m",
        "experiments.sweep",
        f"--config={config_path}",
        f"--workdir={workdir}",
        "--config.data.name=mnist",
        "--config.data.flip=False",
        f"--config.data.train_examples={train_examples}",
        f"--config.data.source_dir={source}",
        f"--config.data.tfds_dir={tfds_dir}",
        *flags,
    ]


def compile_cache_env(cache) -> dict:
    """Environment variables giving processes one persistent compilation cache in `cache`: the
    later processes load the programs the first compiled (the same executables, so the same
    numbers) instead of compiling for seconds each."""
    return dict(
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )


# ------------------------------------------------------------------------------ populations

# Members differ from their solo runs only by float32 rounding: XLA fuses a grouped (vmap) or
# looped (map) convolution differently from a single one (~1e-7 relative per op). Over the 32
# steps here that stays far below 1e-4, while a member that got another's learning rate, seed
# or data order is off by more than 1e-2 within a step or two.
MEMBER_RTOL, MEMBER_ATOL = 1e-4, 1e-5


def member_configs():
    """Three members differing in every traced number, the seed included; one has momentum 0."""
    settings = [
        dict(seed=0, learning_rate=0.05, momentum=0.9, weight_decay=5e-4, label_smoothing=0.1),
        dict(seed=1, learning_rate=0.1, momentum=0.0, weight_decay=0.0, label_smoothing=0.0),
        dict(seed=2, learning_rate=0.02, momentum=0.5, weight_decay=1e-3, label_smoothing=0.2),
    ]
    configs = []
    for s in settings:
        config = small_config("hand")
        config.seed = s["seed"]
        config.optim.update(
            learning_rate=s["learning_rate"], momentum=s["momentum"], weight_decay=s["weight_decay"]
        )
        config.train.label_smoothing = s["label_smoothing"]
        config.train.epochs = 2
        configs.append(config)
    return configs


def together(configs, images, labels, layout, placement="device"):
    """The members as one population: (final population, losses [S, M])."""
    steps = images.shape[0] // configs[0].train.batch_size
    data = one_device_feed(images, labels, placement)
    pop = population.init(configs, SMALL_SPEC, images.shape[1:], steps)
    step = population.make_step(SMALL_SPEC, configs[0], steps, layout, data)
    losses = []
    for epoch in range(configs[0].train.epochs):
        idx_MSB = population.epoch_indices(pop, epoch, images.shape[0], configs[0].train.batch_size)
        for s in range(idx_MSB.shape[1]):
            pop, metrics = step(pop, data.resident, data.batch(np.asarray(idx_MSB[:, s]), 1))
            losses.append(np.asarray(metrics["loss"]))
    return pop, np.stack(losses)
