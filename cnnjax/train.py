"""Training: TrainState, the jitted train step and the steps of an epoch (a loop over it, or one
lax.scan), the optimizer from config, and evaluation.

Legend: images_NHWC the whole uint8 split (kept on the device; batches are gathered there),
labels_N int32, x_BHWC one batch as float32 in [0, 1], idx_SB the example indices of S steps of
B examples. Randomness: one root key from config.seed, split by purpose (init, data, augment);
epoch e shuffles with fold_in(data_key, e), step t augments with fold_in(aug_key, t), so a run
resumed from a checkpoint draws exactly the numbers the uninterrupted run drew.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from cnnjax import grads, losses, models

GRADIENTS = ("autodiff", "hand", "custom_vjp")  # jax.grad; manual backprop; jax.grad via twins
SCHEDULES = ("constant", "step", "cosine")


class TrainState(NamedTuple):
    params: dict
    opt_state: optax.OptState
    step: jax.Array  # int32: optimizer steps taken
    data_key: jax.Array  # raw uint32 key data (jax.random.key_data): shuffling
    aug_key: jax.Array  # raw uint32 key data: augmentation


# --------------------------------------------------------------------------- optimizer


def learning_rate_schedule(optim, steps_per_epoch: int, epochs: int) -> optax.Schedule:
    """optim.schedule: "constant", "step" (times optim.decay_factor at each of
    optim.decay_epochs) or "cosine" (to 0 at the last step); after optim.warmup_epochs of
    linear warm-up from 0."""
    base, total = optim.learning_rate, epochs * steps_per_epoch
    warmup = int(optim.warmup_epochs * steps_per_epoch)
    if optim.schedule == "constant":
        main = optax.constant_schedule(base)
    elif optim.schedule == "step":
        boundaries = {int(e * steps_per_epoch) - warmup: optim.decay_factor
                      for e in optim.decay_epochs}  # fmt: skip
        main = optax.piecewise_constant_schedule(base, boundaries)
    elif optim.schedule == "cosine":
        main = optax.cosine_decay_schedule(base, max(total - warmup, 1))
    else:
        raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {optim.schedule!r}")
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, base, warmup), main], [warmup])


def make_optimizer(optim, steps_per_epoch: int, epochs: int) -> optax.GradientTransformation:
    """SGD with (Nesterov) momentum; weight decay adds wd * params to the gradient (L2).

    The numbers (learning rate, momentum, weight decay) may be traced scalars, one population
    member's own values (cnnjax.population); a traced momentum of 0 is plain SGD, as here."""
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
    init_key, data_key, aug_key = jax.random.split(jax.random.key(seed), 3)
    params = models.init(init_key, spec, input_shape)
    return TrainState(
        params, optimizer.init(params), jnp.zeros((), jnp.int32),
        jax.random.key_data(data_key), jax.random.key_data(aug_key),
    )  # fmt: skip


def loss_logits_grads(params, x_BHWC, labels_B, spec, *, gradients: str, label_smoothing=0.0):
    """(batch-mean loss, logits_BK, grads) with the gradient from `gradients` (GRADIENTS)."""
    if gradients == "hand":
        return grads.backprop(params, x_BHWC, labels_B, spec, label_smoothing=label_smoothing)
    if gradients not in GRADIENTS:
        raise ValueError(f"train.gradients must be one of {GRADIENTS}, got {gradients!r}")
    fns = grads.HAND_DERIVED if gradients == "custom_vjp" else models.PLAIN

    def loss_fn(p):
        logits = models.batch_logits(p, x_BHWC, spec, fns)
        return jnp.mean(losses.cross_entropy(logits, labels_B, label_smoothing=label_smoothing)), (
            logits
        )

    (loss, logits), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, logits, g


def augment(x_BHWC, key, *, shift: int, flip: bool):
    """Random translations by up to `shift` pixels (zero fill) and, if `flip`, left-right flips
    with probability 1/2, one draw per example."""
    if shift == 0 and not flip:
        return x_BHWC
    b, h, w, _ = x_BHWC.shape
    shift_key, flip_key = jax.random.split(key)
    offsets = jax.random.randint(shift_key, (b, 2), 0, 2 * shift + 1)
    padded = jnp.pad(x_BHWC, ((0, 0), (shift, shift), (shift, shift), (0, 0)))
    crop = jax.vmap(
        lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, img.shape[2]))
    )
    x_BHWC = crop(padded, offsets)
    if flip:
        flips = jax.random.bernoulli(flip_key, 0.5, (b, 1, 1, 1))
        x_BHWC = jnp.where(flips, x_BHWC[:, :, ::-1], x_BHWC)
    return x_BHWC


def to_float(images_uint8):
    return images_uint8.astype(jnp.float32) / 255.0


def train_step(
    state: TrainState, images_NHWC, labels_N, idx_B, *, spec, optimizer, config,
    label_smoothing=None,
):  # fmt: skip
    """One SGD step on the examples idx_B, gathered from the on-device split. label_smoothing
    (a population member's traced value) replaces config.train.label_smoothing if given."""
    if label_smoothing is None:
        label_smoothing = config.train.label_smoothing
    x_BHWC = to_float(jnp.take(images_NHWC, idx_B, axis=0))
    aug_key = jax.random.fold_in(jax.random.wrap_key_data(state.aug_key), state.step)
    x_BHWC = augment(x_BHWC, aug_key, shift=config.data.shift, flip=config.data.flip)
    labels_B = jnp.take(labels_N, idx_B, axis=0)
    loss, logits, g = loss_logits_grads(
        state.params, x_BHWC, labels_B, spec,
        gradients=config.train.gradients, label_smoothing=label_smoothing,
    )  # fmt: skip
    with jax.numpy_dtype_promotion("standard"):  # optax's schedules mix int counts and floats
        updates, opt_state = optimizer.update(g, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "accuracy": losses.accuracy(logits, labels_B)}
    return state._replace(params=params, opt_state=opt_state, step=state.step + 1), metrics


def make_train_steps(spec, optimizer, config, put_indices=None):
    """fn(state, images_NHWC, labels_N, idx_SB) -> (state, metrics of each of the S steps).

    The plain form is a Python loop over one jitted step (the state's buffers donated); with
    config.train.scan the S steps are one lax.scan, so the loop itself runs on the device. On
    XLA:CPU (jax 0.10.2, 2 cores) the scan is ~10x slower per step (convolutions inside a
    while loop lose their fast path), so the loop is the default; on accelerators try both.

    put_indices(idx, axis), if given, places the indices before they enter the jitted code:
    each step's idx_B (axis 0) in the loop, the chunk's idx_SB (axis 1, the batch) for a scan;
    e.g. split over a device mesh (cnnjax.parallel.put_sharded). The other arguments keep the
    placement they come with, and jit partitions the step to match."""
    put = put_indices or (lambda idx, axis: idx)
    step = functools.partial(train_step, spec=spec, optimizer=optimizer, config=config)
    if config.train.scan:

        def scanned(state, images_NHWC, labels_N, idx_SB):
            body = lambda s, idx_B: step(s, images_NHWC, labels_N, idx_B)  # noqa: E731
            return jax.lax.scan(body, state, idx_SB)

        jitted_scan = jax.jit(scanned, donate_argnums=0)
        return lambda state, images_NHWC, labels_N, idx_SB: jitted_scan(
            state, images_NHWC, labels_N, put(idx_SB, 1)
        )
    jitted_step = jax.jit(step, donate_argnums=0)

    def loop(state, images_NHWC, labels_N, idx_SB):
        metrics = []
        for idx_B in idx_SB:
            state, step_metrics = jitted_step(state, images_NHWC, labels_N, put(idx_B, 0))
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


@functools.partial(jax.jit, static_argnames=("spec", "batch_size"))
def evaluate(params, images_NHWC, labels_N, *, spec, batch_size: int = 1000):
    """Mean loss, accuracy and the predicted class of every example of a split (in order)."""
    n = images_NHWC.shape[0]
    pad = -n % batch_size
    images = jnp.pad(images_NHWC, ((0, pad), (0, 0), (0, 0), (0, 0)))
    labels = jnp.pad(labels_N, (0, pad))

    def batch(_, xy):
        logits = models.batch_logits(params, to_float(xy[0]), spec)
        return None, (losses.cross_entropy(logits, xy[1]), jnp.argmax(logits, axis=-1))

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
