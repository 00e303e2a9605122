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
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import faults, parallel
from cnnjax.output import events, jsonl, progress
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
    epochs: tuple[int, int] | None = None,
    start=None,
    events_dir: Path | None = None,
    hparams: dict[int, dict] | None = None,
    step=None,
) -> Population:
    """Train `configs` (one program: they differ only in HYPER and seed) as one population in
    `directory`: metrics.jsonl (a line per member per epoch, `member` = its index in `members`
    order) and checkpoints/<epochs done>/ of the whole population; resume=True continues
    from the last checkpoint. `feeds` = (train feed, test feed) (cnnjax.training.feed, e.g.
    run.make_feeds): the population is replicated on their mesh and each batch split over it.
    `epochs` = (first, last): train from epoch `first` to `last` (default: 0 to
    config.train.epochs; the schedules are always config.train.epochs long), starting from
    start(template) (a Population after `first` epochs, in the template's members, shapes and
    hyperparameters) where first > 0 and no checkpoint is there to resume. With `events_dir`,
    each member's rows, step losses and HYPER numbers also go to TensorBoard in
    events_dir/member-<m>/, `hparams[m]` (its swept fields) as its HParams session. `step`:
    make_step's step for this program and feed, compiled by an earlier population (default: a
    new one). Returns the final population."""
    config, (train_feed, test_feed, *validation) = configs[0], feeds
    first, last = epochs or (0, config.train.epochs)
    mesh = train_feed.mesh
    settings.check(config, mesh)
    steps = settings.steps_per_epoch(len(train_feed.split[1]), config.train.batch_size)
    pop = template(configs, spec, train_feed)
    saved = checkpoints.manager(directory, config.train.checkpoints_kept)
    pop, epochs_done = checkpoints.restore(saved, pop) if resume else (pop, 0)
    if epochs_done == 0 and first > 0:
        pop, epochs_done = parallel.put_replicated(start(pop), mesh), first
    if resume:
        jsonl.truncate_after(directory / "metrics.jsonl", epochs_done * steps)
    step = step or make_step(spec, config, steps, layout, train_feed)
    mirror = None
    if events_dir is not None and parallel.is_primary():
        mirror = events.Members(events_dir, epochs_done * steps if resume else None, hparams)
    with jsonl.MetricsWriter(directory / "metrics.jsonl", events=mirror) as writer:
        for epoch in range(epochs_done, last):
            start = time.perf_counter()
            pop, seen = _epoch(pop, step, train_feed, epoch, config, label)
            if mirror is not None:
                mirror.epoch_steps(members, seen, jax.device_get(pop.hyper), epoch * steps)
            seconds = time.perf_counter() - start
            evaluate = functools.partial(_evaluate, pop=pop, spec=spec, config=config)
            tests = [evaluate(test_feed, k) for k in range(len(members))]
            held = [evaluate(validation[0], k) if validation else {} for k in range(len(members))]
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
                    validation_loss=held[k].get("loss"),
                    validation_accuracy=held[k].get("accuracy"),
                    diverged_at=int(pop.diverged_at[k]) or None,
                    seconds=seconds,
                )
                faults.point("population.row")
            checkpoints.save(saved, epoch + 1, pop)
            faults.point("population.checkpoint")
    saved.wait_until_finished()
    return pop


def _evaluate(fed, k, *, pop, spec, config) -> dict:
    """Member k's loss and accuracy on the examples of `fed` (a test or validation feed)."""
    state = member(pop, k).state
    return train.evaluate_fed(
        state.params,
        fed,
        spec=spec,
        batch_size=config.train.eval_batch_size,
        dtype=config.train.compute_dtype,
        model_state=state.model_state,
        flip=config.train.eval_flip,
    )


def template(configs, spec, train_feed) -> Population:
    """`configs`' initial population on the feed's mesh: the start of epoch 0, and the tree a
    checkpoint of these members is restored into."""
    images, labels = train_feed.split
    steps = settings.steps_per_epoch(len(labels), configs[0].train.batch_size)
    return parallel.put_replicated(
        init(configs, spec, tuple(images.shape[1:]), steps), train_feed.mesh
    )


def load(directory: Path, template: Population, epochs_done: int) -> Population:
    """The population checkpointed in `directory` after `epochs_done` epochs (its newest good
    checkpoint), in `template`'s tree; a RuntimeError if that is not the one there."""
    saved = checkpoints.manager(directory, 1)
    pop, found = checkpoints.restore(saved, template)
    if found != epochs_done:
        raise RuntimeError(
            f"{directory} holds no good checkpoint after {epochs_done} epochs (found {found})"
        )
    return pop


def assemble(template: Population, parts: list[tuple[Population, int, Population, int]]):
    """A population in `template`'s members and hyperparameters whose member k takes its state
    from member j of population `src` and its keys (data order, augmentation, dropout) from
    member i of population `own`, for parts[k] = (src, j, own, i): a member restarting from
    its own state (src is own) or from another's (PBT's exploit)."""
    states, diverged = [], []
    for src, j, own, i in parts:
        keys = member(own.state, i)
        states.append(
            member(src.state, j)._replace(
                data_key=keys.data_key, aug_key=keys.aug_key, dropout_key=keys.dropout_key
            )
        )
        diverged.append(src.diverged_at[j])
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
    return Population(stacked, template.hyper, jnp.stack(diverged))
