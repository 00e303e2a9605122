"""A population: M runs of one program (same network, data, batch size, schedule shape) that
differ only in numbers, trained together as ONE jitted program.

Each member has its own seed (so its own init, data order, augmentation and dropout, exactly as
its solo run would draw them), its own network state (BatchNorm's running statistics) and its own
hyperparameters (HYPER), which enter the program as traced
scalars. A member whose update is not finite is frozen at its last finite state and marked
(`diverged_at`), and so is one whose epoch's evaluation (test loss) or params are not finite;
the others go on undisturbed.

Layouts of the member axis (LAYOUTS), all the same numbers within float rounding:
  "vmap"    jax.vmap of the member step: XLA sees one convolution with M feature groups.
  "unroll"  a Python loop over members inside the jitted program: M ordinary convolutions that
            XLA may run concurrently.
  "map"     jax.lax.map over members: one member at a time inside a device loop.
  "sequential"  populations of one member, one after another: each program is one run's step.
            The fastest on XLA:CPU under cnnjax.runtime's settings, where one step already keeps
            both cores busy (experiments/benchmark_sweep: 8 members, batch 128: sequential
            11,187 img/s, unroll 0.78x, vmap 0.54x, map 0.04x).
Legend: M members, S steps, B examples per step; every leaf of a Population has a leading M.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import faults, parallel
from cnnjax.output import jsonl, progress
from cnnjax.training import checkpoints, settings, train

LAYOUTS = ("vmap", "unroll", "map", "sequential")
ONE_PROGRAM = ("vmap", "unroll", "map")  # the layouts that put several members in one program
# A member's own numbers: name -> the config field it comes from.
HYPER = {
    "learning_rate": "optim.learning_rate",
    "momentum": "optim.momentum",
    "weight_decay": "optim.weight_decay",
    "label_smoothing": "train.label_smoothing",
}


class Population(NamedTuple):
    state: train.TrainState  # every leaf stacked: params_M..., model_state_M..., step_M, keys_M2
    hyper: dict  # name -> float32[M] (HYPER)
    diverged_at: jax.Array  # int32[M]: 0 healthy, else the step whose update was not finite


def resolve_layout(layout: str) -> str:
    """ "auto" is "sequential" on CPU (one step keeps its cores busy, and grouped convolutions
    are slow there) and "vmap" elsewhere."""
    if layout == "auto":
        return "sequential" if jax.default_backend() == "cpu" else "vmap"
    if layout not in LAYOUTS:
        raise ValueError(f"sweep.layout must be 'auto' or one of {LAYOUTS}, got {layout!r}")
    return layout


def member_optimizer(config, hyper: dict, steps_per_epoch: int):
    """config's optimizer with a member's (possibly traced) learning rate, momentum and weight
    decay. A momentum of 0 keeps its (zero-weighted) buffer: the same numbers as plain SGD."""
    optim = train.Optim(**config.optim)._replace(
        learning_rate=hyper["learning_rate"],
        momentum=jnp.asarray(hyper["momentum"], jnp.float32),
        weight_decay=hyper["weight_decay"],
    )
    return train.make_optimizer(optim, steps_per_epoch, config.train.epochs)


def init(configs, spec, input_shape, steps_per_epoch: int) -> Population:
    """Members' initial states, each from its own config.seed, stacked."""
    hyper = {
        name: jnp.asarray([settings.get(c, f) for c in configs], jnp.float32)
        for name, f in HYPER.items()
    }
    states = []
    for k, config in enumerate(configs):
        member_hyper = {name: values[k] for name, values in hyper.items()}
        optimizer = member_optimizer(config, member_hyper, steps_per_epoch)
        states.append(train.init_state(config.seed, spec, input_shape, optimizer))
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
    return Population(stacked, hyper, jnp.zeros(len(configs), jnp.int32))


def member(tree, k: int):
    """Member k of a population (or any tree with a leading member axis), without that axis."""
    return jax.tree.map(lambda leaf: leaf[k], tree)


def _member_step(
    state, hyper, diverged_at, resident, batch, *, feed, spec, config, steps_per_epoch
):
    optimizer = member_optimizer(config, hyper, steps_per_epoch)
    new, metrics = train.train_step(
        state,
        *feed.gather(resident, batch),
        spec=spec,
        optimizer=optimizer,
        config=config,
        label_smoothing=hyper["label_smoothing"],
    )
    finite = jnp.isfinite(metrics["loss"])
    for leaf in jax.tree.leaves(new.params):
        finite &= jnp.all(jnp.isfinite(leaf))
    healthy = (diverged_at == 0) & finite
    state = jax.tree.map(lambda n, o: jnp.where(healthy, n, o), new, state)
    diverged_at = jnp.where((diverged_at == 0) & ~finite, new.step, diverged_at)
    metrics = {k: jnp.where(diverged_at == 0, v, jnp.nan) for k, v in metrics.items()}
    return state, diverged_at, metrics


def make_step(spec, config, steps_per_epoch: int, layout: str, feed):
    """jit(fn(population, resident, batch_M) -> (population, metrics_M)), the population's
    buffers donated: one step of every member on its own examples, batch_M = feed.batch(idx_MB,
    axis=1) (cnnjax.training.feed); `layout` as in the module docstring."""
    one = functools.partial(
        _member_step, feed=feed, spec=spec, config=config, steps_per_epoch=steps_per_epoch
    )

    def step(pop: Population, resident, batch_M):
        args = (pop.state, pop.hyper, pop.diverged_at)
        if layout == "vmap":
            mapped = jax.vmap(one, in_axes=(0, 0, 0, None, 0))
            state, diverged_at, metrics = mapped(*args, resident, batch_M)
        elif layout == "map":
            state, diverged_at, metrics = jax.lax.map(
                lambda a: one(*a[:3], resident, a[3]), (*args, batch_M)
            )
        else:  # "unroll"; "sequential" is the unroll of one member
            count = len(pop.diverged_at)
            outs = [one(*member(args, k), resident, member(batch_M, k)) for k in range(count)]
            state, diverged_at, metrics = jax.tree.map(lambda *m: jnp.stack(m), *outs)
        return Population(state, pop.hyper, diverged_at), metrics

    return jax.jit(step, donate_argnums=0)


def epoch_indices(pop: Population, epoch: int, num_examples: int, batch_size: int):
    """idx_MSB: each member's own permutation for `epoch` (as its solo run draws it)."""
    one = functools.partial(
        train.epoch_indices, epoch=epoch, num_examples=num_examples, batch_size=batch_size
    )
    return jax.vmap(one)(pop.state)


# ------------------------------------------------------------------------ fitting in memory


def available_bytes() -> int:
    """Free memory of the default device: the accelerator's allocator limit minus what is in
    use, or the host's available RAM on CPU."""
    stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def member_bytes(spec, config, steps_per_epoch: int, feed) -> int:
    """Device memory one more member costs: its state (in and out of a step) plus the step's
    temporaries, from XLA's memory analysis of a one-member program."""
    images = feed.split[0]
    pop = jax.eval_shape(lambda: init([config], spec, images.shape[1:], steps_per_epoch))
    batch = feed.abstract_batch((1, config.train.batch_size))
    step = make_step(spec, config, steps_per_epoch, "unroll", feed)
    analysis = step.lower(pop, feed.resident, batch).compile().memory_analysis()
    state_bytes = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(pop))
    temp = analysis.temp_size_in_bytes if analysis is not None else 0
    return int(2 * state_bytes + temp)


def members_per_program(per_member: int, budget: int, cap: int = 0) -> int:
    """How many members one program holds: as many as fit in `budget` bytes (at least one), at
    most `cap` (0: no cap)."""
    fit = max(1, budget // max(per_member, 1))
    return int(min(fit, cap) if cap > 0 else fit)


def chunks(items, size: int) -> list:
    """items cut into consecutive lists of at most `size` (the last may be shorter)."""
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def stack_rows(metrics_SM: list[dict]) -> dict:
    """Per-step metric dicts of shape [M] -> name -> float64[S, M] on the host."""
    host = jax.device_get(metrics_SM)
    return {k: np.stack([np.asarray(m[k], np.float64) for m in host]) for k in host[0]}


def judge(pop: Population, test_losses, step: int, mesh) -> Population:
    """`pop` with every healthy member whose params are not finite, or whose test loss (one
    per member) is NaN or >= train.DIVERGED_LOSS, marked as diverged at `step`; from then on its
    steps leave it frozen."""
    leaves = jax.tree.leaves(pop.state.params)
    finite_params = jnp.stack(
        [jnp.all(jnp.isfinite(leaf), axis=tuple(range(1, leaf.ndim))) for leaf in leaves]
    ).all(axis=0)
    finite = (np.asarray(test_losses, np.float64) < train.DIVERGED_LOSS) & np.asarray(finite_params)
    before = np.asarray(pop.diverged_at)
    diverged_at = np.where((before == 0) & ~finite, step, before).astype(np.int32)
    return pop._replace(diverged_at=parallel.put_replicated(diverged_at, mesh))


# --------------------------------------------------------------------------------- on disk


def _epoch(pop, step, train_feed, epoch, config, label):
    """One epoch of the population; returns (population, name -> float64[S, M]). Each step's
    examples idx_MB come through the feed, split over its mesh along B (data parallel within
    every member)."""
    num_examples = len(train_feed.split[1])
    steps = num_examples // config.train.batch_size
    idx_MSB = np.asarray(epoch_indices(pop, epoch, num_examples, config.train.batch_size))
    bar = progress.progress(
        steps,
        f"{label} epoch {epoch + 1}/{config.train.epochs}",
        enabled=None if parallel.is_primary() else False,
        images_per_step=config.train.batch_size * idx_MSB.shape[0],
    )
    seen = []
    for s, batch_M in enumerate(train_feed.batches(idx_MSB.transpose(1, 0, 2), axis=1)):
        pop, metrics = step(pop, train_feed.resident, batch_M)
        seen.append(metrics)
        if (s + 1) % config.train.steps_per_chunk == 0 or s + 1 == steps:
            jax.block_until_ready(metrics)  # the bar shows finished steps, not queued ones
            bar.update(s + 1 - bar.n)
    seen = stack_rows(seen)
    bar.set_metrics(loss=seen["loss"].mean(axis=0), acc=seen["accuracy"].mean(axis=0))
    bar.close()
    return pop, seen


def fit(
    configs,
    members: list[int],
    directory: Path,
    spec,
    feeds,
    *,
    layout: str,
    resume: bool,
    label: str = "population",
) -> Population:
    """Train `configs` (one program: they differ only in HYPER and seed) as one population in
    `directory`: metrics.jsonl (a line per member per epoch, `member` = its index in `members`
    order) and checkpoints/<epochs done>/ of the whole population; resume=True continues
    from the last checkpoint. `feeds` = (train feed, test feed) (cnnjax.training.feed, e.g.
    run.make_feeds): the population is replicated on their mesh and each batch split over it.
    Returns the final population."""
    config, (train_feed, test_feed) = configs[0], feeds
    mesh = train_feed.mesh
    settings.check(config, mesh)
    images = train_feed.split[0]
    steps = settings.steps_per_epoch(images.shape[0], config.train.batch_size)
    pop = parallel.put_replicated(init(configs, spec, tuple(images.shape[1:]), steps), mesh)
    saved = checkpoints.manager(directory, config.train.checkpoints_kept)
    pop, epochs_done = checkpoints.restore(saved, pop) if resume else (pop, 0)
    if resume:
        jsonl.truncate_after(directory / "metrics.jsonl", epochs_done * steps)
    step = make_step(spec, config, steps, layout, train_feed)
    with jsonl.MetricsWriter(directory / "metrics.jsonl") as writer:
        for epoch in range(epochs_done, config.train.epochs):
            start = time.perf_counter()
            pop, seen = _epoch(pop, step, train_feed, epoch, config, label)
            seconds = time.perf_counter() - start
            tests = [
                train.evaluate_fed(
                    member(pop, k).state.params,
                    test_feed,
                    spec=spec,
                    batch_size=config.train.eval_batch_size,
                    dtype=config.train.compute_dtype,
                    model_state=member(pop, k).state.model_state,
                    flip=config.train.eval_flip,
                )
                for k in range(len(members))
            ]
            pop = judge(pop, [t["loss"] for t in tests], (epoch + 1) * steps, mesh)
            for k, index in enumerate(members):
                writer.write(
                    kind="epoch",
                    step=(epoch + 1) * steps,
                    epoch=epoch + 1,
                    member=index,
                    train_loss=np.mean(seen["loss"][:, k]),
                    train_accuracy=np.mean(seen["accuracy"][:, k]),
                    test_loss=tests[k]["loss"],
                    test_accuracy=tests[k]["accuracy"],
                    diverged_at=int(pop.diverged_at[k]) or None,
                    seconds=seconds,
                )
                faults.point("population.row")
            checkpoints.save(saved, epoch + 1, pop)
            faults.point("population.checkpoint")
    saved.wait_until_finished()
    return pop
