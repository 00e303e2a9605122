"""One training method measured at one batch size in this process: cnnjax's trainer (hand or
autodiff gradients) or an idiomatic peer (cnnjax.bench.peers), on random uint8 images of the real
shape (throughput does not depend on pixel values). Legend: S steps, B batch.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np

from cnnjax import models, parallel
from cnnjax.bench import machine, peers, timing
from cnnjax.training import feed, settings, train

METHODS = (
    "cnnjax autodiff",
    "cnnjax hand",
    "flax nnx",
    "flax linen",
    "flax linen + runtime",
    "pytorch eager",
    "pytorch eager + runtime",
    "torch.compile",
)
# A peer run under cnnjax.runtime's settings, as cnnjax's methods always are: its malloc settings
# speed up PyTorch's CPU tensors too, and its XLA flag Flax's convolutions.
TUNED = " + runtime"
TORCH_METHODS = ("pytorch eager", "pytorch eager + runtime", "torch.compile")
EVAL_BATCH = 1000


def train_config(config, gradients: str, batch_size: int) -> ml_collections.ConfigDict:
    """`config` with what every method shares: SGD with plain momentum at a constant rate; no
    weight decay, warm-up, augmentation or label smoothing; `gradients` for cnnjax's step."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.optim.update(schedule="constant", warmup_epochs=0.0, weight_decay=0.0, nesterov=False)
    config.train.update(gradients=gradients, batch_size=batch_size, label_smoothing=0.0, scan="no")
    config.data.update(shift=0, flip=False)
    return config


def _cnnjax_windows(method, config, spec, params, data):
    """cnnjax's trainer as experiments.train runs it: make_train_steps (a loop over the jitted
    step, state donated) on indices into the uint8 split kept on the device."""
    config = train_config(config, method.split()[1], data["idx_SB"].shape[1])
    optimizer = train.make_optimizer(config.optim, steps_per_epoch=1, epochs=1)
    state = train.init_state(config.seed, spec, data["images"].shape[1:], optimizer)
    holder = [state._replace(params=params, opt_state=optimizer.init(params))]
    mesh = parallel.make_mesh(jax.devices()[:1])
    train_feed = feed.DeviceFeed((data["images"], data["labels"]), mesh)
    eval_feed = feed.DeviceFeed((data["eval_images"], data["eval_labels"]), mesh)
    run_steps = train.make_train_steps(spec, optimizer, config, train_feed)

    def train_window():
        holder[0], metrics = run_steps(holder[0], data["idx_SB"])
        return float(metrics["loss"][-1])

    def eval_window():
        state = holder[0]
        evaluated = train.evaluate_fed(
            state.params, eval_feed, spec=spec, batch_size=EVAL_BATCH, model_state=state.model_state
        )
        jax.block_until_ready(evaluated)

    return train_window, eval_window


def _peer(method, config, spec, params, input_shape) -> peers.Peer:
    lr, momentum = config.optim.learning_rate, config.optim.momentum
    method = method.removesuffix(TUNED)
    if method == "flax nnx":
        return peers.nnx_peer(params, spec, input_shape, learning_rate=lr, momentum=momentum)
    if method == "flax linen":
        return peers.linen_peer(params, spec, learning_rate=lr, momentum=momentum)
    compile = method == "torch.compile"
    return peers.torch_peer(params, spec, learning_rate=lr, momentum=momentum, compile=compile)


def _peer_windows(method, config, spec, params, data):
    """A peer's loop on host batches made beforehand (as a prefetching loader would have them)."""
    peer = _peer(method, config, spec, params, data["images"].shape[1:])
    batches = [peer.batch(data["images"][idx], data["labels"][idx]) for idx in data["idx_SB"]]
    evals = []
    for i in range(0, len(data["eval_images"]), EVAL_BATCH):
        part = slice(i, i + EVAL_BATCH)
        evals.append(peer.batch(data["eval_images"][part], data["eval_labels"][part]))

    def train_window():
        for batch in batches:
            loss = peer.step(batch)
        return float(peer.wait(loss))

    def eval_window():
        for batch in evals:
            peer.wait(peer.logits(batch))

    return train_window, eval_window


def _random_data(seed: int, examples: int, steps: int, batch_size: int, eval_images: int):
    """Random uint8 images and labels to train on, indices idx_SB into them, and images to
    evaluate."""
    input_shape = models.REFERENCE_INPUT_SHAPE
    rng = np.random.default_rng(seed)
    return dict(
        images=rng.integers(0, 256, (examples, *input_shape), np.uint8),
        labels=rng.integers(0, 10, examples).astype(np.int32),
        idx_SB=rng.integers(0, examples, (steps, batch_size)).astype(np.int32),
        eval_images=rng.integers(0, 256, (eval_images, *input_shape), np.uint8),
        eval_labels=rng.integers(0, 10, eval_images).astype(np.int32),
    )


def _rates(work: int, timed: timing.Windows) -> dict:
    return dict(**timing.rates(work, timed.seconds), compile_s=timing.compile_s(timed))


def measure(
    method, batch_size, config, *, steps, repeats, eval_images, evaluate, examples=10_000
) -> dict:
    """One method at one batch size, in this process: training img/s over windows of `steps`
    steps, and (if `evaluate`) forward img/s over `eval_images` images in batches of EVAL_BATCH.
    compile_s is the first window's seconds minus a steady window's (tracing, compilation and
    first-call set-up). Memory: ru_maxrss, the process's peak resident memory, and its growth
    over the resident memory after the imports and the data, before the method was built.
    load_average: the machine's 1-minute load at the end; the measurement itself makes up to the
    core count, more means other processes shared the cores."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method in TORCH_METHODS:
        import torch  # noqa: F401  (its import belongs to the baseline, not to the method)
    spec, input_shape = settings.spec(config), models.REFERENCE_INPUT_SHAPE
    data = _random_data(config.seed, examples, steps, batch_size, eval_images)
    baseline_mib = machine.rss_mib()
    params = models.init(jax.random.key(config.seed), spec, input_shape)
    windows = _cnnjax_windows if method.startswith("cnnjax") else _peer_windows
    train_window, eval_window = windows(method, config, spec, params, data)
    timed = timing.time_windows(train_window, repeats)
    row = dict(method=method, batch=batch_size, steps=steps, loss=timed.result)
    row.update(_rates(steps * batch_size, timed))
    if evaluate:
        timed = timing.time_windows(eval_window, repeats)
        row["eval"] = dict(method=method, images=eval_images, **_rates(eval_images, timed))
    peak, load = machine.peak_rss_mib(), os.getloadavg()[0]
    if evaluate:
        row["eval"]["load_average"] = load
    return dict(row, peak_rss_mib=peak, rss_growth_mib=peak - baseline_mib, load_average=load)
