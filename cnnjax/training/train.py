"""Training: TrainState, the jitted train step and the steps of an epoch (a loop over it, or one
lax.scan), the optimizer from plain numbers (Optim), and evaluation.

Legend: images_NHWC a whole uint8 split, labels_N int32, x_BHWC one batch (uint8 as it arrives,
float32 in [0, 1] inside the step), idx_SB the example indices of S steps of B examples; batches
reach the devices through a feed (cnnjax.training.feed). Randomness: one root key from config.seed,
split by purpose (init, data, augment, dropout); epoch e shuffles with fold_in(data_key, e), step t
augments with fold_in(aug_key, t) and gives the network's random layers fold_in(dropout_key, t),
so a run resumed from a checkpoint draws exactly the numbers the uninterrupted run drew.

The network's state (models.init_state: BatchNorm's running statistics; {} for a spec without)
travels in the TrainState beside the params: a step trains in train mode and carries the new
state out; evaluation runs in eval mode with it.

Past 350 lines because the step and the evaluation read one set of precision rules (compute_dtype,
cast, the state's dtype), kept together so that the two cannot drift apart.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cnnjax import backprop, losses, models
from cnnjax.training import augment

GRADIENTS = ("autodiff", "hand", "custom_vjp")  # jax.grad; manual backprop; jax.grad via twins
SCHEDULES = ("constant", "step", "cosine")
COMPUTE_DTYPES = ("float32", "bfloat16")  # what the layers compute in (params stay float32)
SCANS = ("auto", "yes", "no")  # config.train.scan: a lax.scan over each chunk of steps
# A mean test loss this high (nats per example: the true class given a probability below
# e^-10000) comes only from a blown-up network, its logits ~1e4 apart; a network that learned
# anything or nothing (uniform over 10 classes: ln 10 = 2.3) stays orders of magnitude below it.
# A run stops, and a population member is marked diverged, at a test loss >= this (or NaN).
DIVERGED_LOSS = 1e4
DROPOUT_STREAM = 3  # dropout_key = fold_in(root key, this): see init_state


class Optim(NamedTuple):
    """The optimizer's plain numbers (config.optim's fields; a config.optim section has the same
    attributes and may be passed wherever an Optim is). learning_rate, momentum and weight_decay
    may be traced scalars: one population member's own values (cnnjax.sweeps.population)."""

    learning_rate: float  # peak, after warm-up
    momentum: float = 0.0  # 0: plain SGD
    nesterov: bool = False
    weight_decay: float = 0.0  # L2: wd * params added to the gradient
    schedule: str = "constant"  # one of SCHEDULES
    warmup_epochs: float = 0.0  # linear warm-up from 0
    decay_epochs: tuple = ()  # "step" schedule: where the rate is multiplied ...
    decay_factor: float = 0.1  # ... by this


class TrainState(NamedTuple):
    params: dict
    opt_state: optax.OptState
    step: jax.Array  # int32: optimizer steps taken
    data_key: jax.Array  # raw uint32 key data (jax.random.key_data): shuffling
    aug_key: jax.Array  # raw uint32 key data: augmentation
    model_state: dict  # the network's state (models.init_state), float32; {} for most specs
    dropout_key: jax.Array  # raw uint32 key data: the network's random layers (dropout)


class Gradients(NamedTuple):
    """What one training batch gives (`loss_logits_grads`)."""

    loss: jax.Array  # the batch mean, float32
    logits: jax.Array  # logits_BK, float32
    grads: dict  # the params' pytree, in the params' dtype
    model_state: dict  # the network's state after the step, in its stored dtype


# --------------------------------------------------------------------------- optimizer


def learning_rate_schedule(optim: Optim, steps_per_epoch: int, epochs: int) -> optax.Schedule:
    """optim.schedule: "constant", "step" (times optim.decay_factor at each of
    optim.decay_epochs) or "cosine" (to 0 at the last step); after optim.warmup_epochs of
    linear warm-up from 0."""
    base, total = optim.learning_rate, epochs * steps_per_epoch
    warmup = int(optim.warmup_epochs * steps_per_epoch)
    if optim.schedule == "constant":
        main = optax.constant_schedule(base)
    elif optim.schedule == "step":
        boundaries = {
            int(e * steps_per_epoch) - warmup: optim.decay_factor for e in optim.decay_epochs
        }
        main = optax.piecewise_constant_schedule(base, boundaries)
    elif optim.schedule == "cosine":
        main = optax.cosine_decay_schedule(base, max(total - warmup, 1))
    else:
        raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {optim.schedule!r}")
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, base, warmup), main], [warmup])


def make_optimizer(optim: Optim, steps_per_epoch: int, epochs: int) -> optax.GradientTransformation:
    """SGD with (Nesterov) momentum; weight decay adds wd * params to the gradient (L2). A traced
    momentum of 0 keeps its (zero-weighted) buffer: the same numbers as plain SGD."""
    schedule = learning_rate_schedule(optim, steps_per_epoch, epochs)
    momentum = optim.momentum
    if isinstance(momentum, (int, float)) and momentum == 0:
        momentum = None  # no momentum buffer in the optimizer state
    return optax.chain(
        optax.add_decayed_weights(optim.weight_decay),
        optax.sgd(schedule, momentum=momentum, nesterov=optim.nesterov),
    )


# --------------------------------------------------------------------------- state and steps


def init_state(seed: int, spec, input_shape, optimizer) -> TrainState:
    root = jax.random.key(seed)
    init_key, data_key, aug_key = jax.random.split(root, 3)
    # Folded from the root, not a fourth split: split(root, 4) would change the other three,
    # and with them the numbers of every run made before the key existed.
    dropout_key = jax.random.fold_in(root, DROPOUT_STREAM)
    params = models.init(init_key, spec, input_shape)
    return TrainState(
        params,
        optimizer.init(params),
        jnp.zeros((), jnp.int32),
        jax.random.key_data(data_key),
        jax.random.key_data(aug_key),
        models.init_state(spec, input_shape),
        jax.random.key_data(dropout_key),
    )


def compute_dtype(name: str):
    """The dtype of a config's train.compute_dtype (COMPUTE_DTYPES)."""
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"train.compute_dtype must be one of {COMPUTE_DTYPES}, got {name!r}")
    return jnp.dtype(name)


def cast(tree, dtype):
    """Every leaf of `tree` as `dtype` (no-op where it already is)."""
    return jax.tree.map(lambda leaf: leaf.astype(dtype), tree)


def loss_logits_grads(
    params,
    x_BHWC,
    labels_B,
    spec,
    *,
    gradients: str,
    label_smoothing=0.0,
    dtype="float32",
    model_state=None,
    key=None,
) -> Gradients:
    """(batch-mean loss, logits_BK, grads, the network's state after the step) in train mode
    (batch statistics; random layers drawing from `key`), the gradient from `gradients`
    (GRADIENTS); `model_state` the network's state before the step (None: a spec without).

    Mixed precision with dtype "bfloat16": the layers (their dots and convolutions) run on
    bfloat16 copies of the params, the state and the input, the loss and its gradient w.r.t. the
    logits in float32; grads and the new state come back in the dtypes of the params and state
    given (float32), as do loss and logits."""
    low = compute_dtype(dtype)
    if gradients not in GRADIENTS:
        raise ValueError(f"train.gradients must be one of {GRADIENTS}, got {gradients!r}")
    model_state = {} if model_state is None else model_state
    x_BHWC, state_low = x_BHWC.astype(low), cast(model_state, low)
    mode = dict(state=state_low, train=True, key=key)
    if gradients == "hand":
        out = backprop.backprop(
            cast(params, low), x_BHWC, labels_B, spec, label_smoothing=label_smoothing, **mode
        )
        grads = jax.tree.map(lambda d, p: d.astype(p.dtype), out.grads, params)
        return Gradients(out.loss, out.logits, grads, _as_stored(out.state, model_state))
    fns = models.HAND_DERIVED if gradients == "custom_vjp" else models.PLAIN

    def loss_fn(p):  # differentiated w.r.t. the float32 params, through the cast
        logits, new_state = models.batch_apply(cast(p, low), x_BHWC, spec, fns=fns, **mode)
        logits = logits.astype(losses.loss_dtype(low))
        ce = losses.cross_entropy(logits, labels_B, label_smoothing=label_smoothing)
        return jnp.mean(ce), (logits, new_state)

    (loss, (logits, new_state)), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return Gradients(loss, logits, g, _as_stored(new_state, model_state))


def _as_stored(new_state, old_state):
    """The state a step computed, in the dtypes of the state it was given (float32)."""
    return jax.tree.map(lambda n, o: n.astype(o.dtype), new_state, old_state)


def to_float(images_uint8):
    return images_uint8.astype(jnp.float32) / 255.0


def train_step(
    state: TrainState,
    x_BHWC,
    labels_B,
    *,
    spec,
    optimizer,
    config,
    label_smoothing=None,
):
    """One SGD step on a batch of uint8 images x_BHWC. label_smoothing (a population member's
    traced value) replaces config.train.label_smoothing if given."""
    if label_smoothing is None:
        label_smoothing = config.train.label_smoothing
    aug_key = jax.random.fold_in(jax.random.wrap_key_data(state.aug_key), state.step)
    dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.dropout_key), state.step)
    data = config.data
    x_BHWC = augment.augment(
        to_float(x_BHWC), aug_key, shift=data.shift, flip=data.flip, erase=data.erase
    )
    out = loss_logits_grads(
        state.params,
        x_BHWC,
        labels_B,
        spec,
        gradients=config.train.gradients,
        label_smoothing=label_smoothing,
        dtype=config.train.compute_dtype,
        model_state=state.model_state,
        key=dropout_key,
    )
    with jax.numpy_dtype_promotion("standard"):  # optax's schedules mix int counts and floats
        updates, opt_state = optimizer.update(out.grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": out.loss, "accuracy": losses.accuracy(out.logits, labels_B)}
    new = dict(params=params, opt_state=opt_state, model_state=out.model_state, step=state.step + 1)
    return state._replace(**new), metrics


def fed_step(feed, **step_kwargs):
    """fn(state, resident, batch, **kw) -> (state, metrics): train_step on the batch that `feed`
    (cnnjax.training.feed) gathers from its resident arrays and one call's batch, e.g.
    feed.batch(idx_B)."""

    def step(state, resident, batch, **kw):
        return train_step(state, *feed.gather(resident, batch), **step_kwargs, **kw)

    return step


def uses_scan(config) -> bool:
    """config.train.scan: "yes", "no", or "auto": yes on accelerators, no on the CPU, where a
    scan is ~10x slower per step (XLA:CPU, jax 0.10.2, 2 cores: convolutions inside a while
    loop lose their fast path)."""
    if config.train.scan not in SCANS:
        raise ValueError(f"train.scan must be one of {SCANS}, got {config.train.scan!r}")
    if config.train.scan == "auto":
        return jax.default_backend() != "cpu"
    return config.train.scan == "yes"


def make_train_steps(spec, optimizer, config, feed):
    """fn(state, idx_SB) -> (state, metrics of each of the S steps): S steps on the examples
    idx_SB of `feed` (cnnjax.training.feed: it places the batches, e.g. split over a device mesh).

    The loop form calls one jitted step per step (the state's buffers donated; the feed sends
    batches ahead); with uses_scan(config) the S steps are one lax.scan, one call per chunk of
    steps, as launch-bound accelerators need. The same numbers either way, to float rounding."""
    step = fed_step(feed, spec=spec, optimizer=optimizer, config=config)
    if uses_scan(config):

        def scanned(state, resident, batches):
            return jax.lax.scan(lambda s, batch: step(s, resident, batch), state, batches)

        jitted_scan = jax.jit(scanned, donate_argnums=0)
        return lambda state, idx_SB: jitted_scan(state, feed.resident, feed.batch(idx_SB, 1))
    jitted_step = jax.jit(step, donate_argnums=0)

    def loop(state, idx_SB):
        metrics = []
        for batch in feed.batches(idx_SB):
            state, step_metrics = jitted_step(state, feed.resident, batch)
            metrics.append(step_metrics)
        return state, jax.tree.map(lambda *steps: jnp.stack(steps), *metrics)

    return loop


def epoch_indices(state: TrainState, epoch: int, num_examples: int, batch_size: int):
    """idx_SB for `epoch`: a permutation from fold_in(data_key, epoch); the last partial batch
    is dropped (every step sees batch_size examples)."""
    key = jax.random.fold_in(jax.random.wrap_key_data(state.data_key), epoch)
    steps = num_examples // batch_size
    return jax.random.permutation(key, num_examples)[: steps * batch_size].reshape(steps, -1)


# --------------------------------------------------------------------------- evaluation


def eval_logits(params, x_BHWC, *, spec, dtype="float32", model_state=None, flip=False):
    """The logits of a uint8 batch in eval mode (the network's state `model_state`, None for a
    spec without; no dropout), the layers in `dtype`, the logits in at least float32. With
    `flip` (test-time augmentation), each example's logits are the mean of its own and its
    mirror image's (left-right), as for a network trained with flips."""
    low = compute_dtype(dtype)
    x_BHWC, state_low = to_float(x_BHWC).astype(low), cast(model_state or {}, low)
    logits = models.batch_logits(cast(params, low), x_BHWC, spec, state=state_low)
    if flip:
        mirrored = models.batch_logits(cast(params, low), x_BHWC[:, :, ::-1], spec, state=state_low)
        logits = (logits + mirrored) / 2
    return logits.astype(losses.loss_dtype(low))


def evaluate_batch(
    params, x_BHWC, labels_B, *, spec, dtype="float32", model_state=None, flip=False
):
    """(losses_B, predictions_B) of a uint8 batch from its `eval_logits`, the loss in float32."""
    kw = dict(spec=spec, dtype=dtype, model_state=model_state, flip=flip)
    logits = eval_logits(params, x_BHWC, **kw)
    return losses.cross_entropy(logits, labels_B), jnp.argmax(logits, axis=-1)


@functools.partial(jax.jit, static_argnames=("spec", "batch_size", "dtype", "flip"))
def evaluate(
    params,
    images_NHWC,
    labels_N,
    *,
    spec,
    batch_size: int = 1000,
    dtype="float32",
    model_state=None,
    flip=False,
):
    """Mean loss, accuracy and the predicted class of every example of a split (in order), the
    split on the device, in one program, in eval mode with the network's state `model_state`;
    the layers in `dtype` (a COMPUTE_DTYPES name); with `flip`, test-time flips
    (`evaluate_batch`)."""
    n = images_NHWC.shape[0]
    pad = -n % batch_size
    images = jnp.pad(images_NHWC, ((0, pad), (0, 0), (0, 0), (0, 0)))
    labels = jnp.pad(labels_N, (0, pad))

    kw = dict(spec=spec, dtype=dtype, model_state=model_state, flip=flip)

    def batch(_, xy):
        return None, evaluate_batch(params, *xy, **kw)

    shape = (-1, batch_size)
    _, (losses_N, predictions_N) = jax.lax.scan(
        batch, None, (images.reshape(*shape, *images.shape[1:]), labels.reshape(shape))
    )
    losses_N, predictions_N = losses_N.reshape(-1)[:n], predictions_N.reshape(-1)[:n]
    return {
        "loss": jnp.mean(losses_N),
        "accuracy": jnp.mean(predictions_N == labels_N),
        "predictions": predictions_N,
    }


_evaluate_batch = jax.jit(evaluate_batch, static_argnames=("spec", "dtype", "flip"))


def evaluate_fed(
    params, feed, *, spec, batch_size: int = 1000, dtype="float32", model_state=None, flip=False
):
    """`evaluate` of a feed's split: in one program where the split is on the devices, else
    batch by batch as the feed sends them (the last batch padded with example 0)."""
    kw = dict(spec=spec, dtype=dtype, model_state=model_state, flip=flip)
    if feed.placement == "device":
        return evaluate(params, *feed.resident, batch_size=batch_size, **kw)
    labels_N = feed.split[1]
    n = len(labels_N)
    idx = np.concatenate([np.arange(n), np.zeros(-n % batch_size, np.int64)])
    parts = [
        jax.device_get(_evaluate_batch(params, *batch, **kw))
        for batch in feed.batches(idx.reshape(-1, batch_size))
    ]
    losses_N, predictions_N = (np.concatenate([p[k] for p in parts])[:n] for k in range(2))
    accuracy = np.mean(predictions_N == labels_N, dtype=np.float32)  # as the device's mean
    return {"loss": np.mean(losses_N), "accuracy": accuracy, "predictions": predictions_N}
