"""A training run on disk: its directory, resolved config, checkpoints, metrics, plots; resume.

A run directory holds config.json (the resolved config), metrics.jsonl (one JSON line per step
and per epoch), checkpoints/<epochs done>/ (orbax), and at the end summary.json and PNG plots.
An existing run is never overwritten: continuing it takes resume=True, with the same config.

Training is data parallel over every device of every process (cnnjax.parallel): the state is
replicated, each step's batch is split over the devices; the data reach them through a feed
(cnnjax.feed: the splits on every device, or streamed from host memory). Every process takes part
in every computation and checkpoint; only process 0 writes the other files.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import NamedTuple

import jax
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from cnnjax import (
    data,
    feed,
    idx,
    models,
    parallel,
    plots,
    progress,
    report,
    runtime,
    train,
)


class RunError(RuntimeError):
    """A run that cannot start or go on; the message says why and what to do."""


def params_hash(params) -> str:
    """sha256 over every parameter's bytes in tree order: equal hashes, bit-identical params."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        digest.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
    return digest.hexdigest()


ENVIRONMENT = "environment"  # config.json's and summary.json's record of what the run ran on


def prepare_workdir(workdir: Path, config, resume: bool) -> None:
    """Create the run directory with config.json (the resolved config, and under ENVIRONMENT
    what it starts on: runtime.environment()), or check that resuming continues the same
    config. Every process checks (they see the same files, so they fail alike); then process 0
    writes."""
    config_path = workdir / "config.json"
    resolved = json.loads(config.to_json_best_effort())
    if resume:
        if not config_path.exists():
            raise RunError(f"nothing to resume in {workdir}: it has no config.json")
        if _without_environment(json.loads(config_path.read_text())) != resolved:
            raise RunError(
                f"{workdir} was started with another config (see {config_path}); resume it "
                "with the same config and overrides, or start a new run in a new --workdir"
            )
        return
    if workdir.exists() and any(workdir.iterdir()):
        raise RunError(
            f"{workdir} already holds a run; pass --resume to continue it, or choose a new "
            "--workdir (nothing was changed)"
        )
    parallel.barrier("cnnjax.run: workdir checked")  # before process 0 makes it non-empty
    if parallel.is_primary():
        workdir.mkdir(parents=True, exist_ok=True)
        written = {**resolved, ENVIRONMENT: runtime.environment()}
        config_path.write_text(json.dumps(written, indent=2, sort_keys=True) + "\n")


def _without_environment(recorded: dict) -> dict:
    return {k: v for k, v in recorded.items() if k != ENVIRONMENT}


def load_config(workdir) -> ml_collections.ConfigDict:
    """The resolved config a run was started with (config.json less its ENVIRONMENT)."""
    path = Path(workdir) / "config.json"
    if not path.exists():
        raise RunError(f"{workdir} is not a run directory: it has no config.json")
    return ml_collections.ConfigDict(_without_environment(json.loads(path.read_text())))


def checkpoint_manager(workdir: Path, keep: int = 3) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=False
    )
    return ocp.CheckpointManager((workdir / "checkpoints").absolute(), options=options)


def restore(manager: ocp.CheckpointManager, template):
    """(the last checkpoint's state, epochs it had finished), or (template, 0) if none. The
    state comes back in the template's tree structure (a TrainState, a Population, ...)."""
    epochs_done = manager.latest_step()
    if epochs_done is None:
        return template, 0
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    state = manager.restore(epochs_done, args=ocp.args.StandardRestore(abstract))
    return jax.tree.unflatten(jax.tree.structure(template), jax.tree.leaves(state)), epochs_done


def load_splits(config):
    """((train images, labels), (test images, labels)) as host arrays: uint8 images; the first
    config.data.train_examples training examples only, if that is > 0."""
    splits = []
    for split in ("train", "test"):
        images, labels = data.load(
            config.data.name, split,
            source_dir=config.data.source_dir or None, data_dir=config.data.tfds_dir or None,
        )  # fmt: skip
        if split == "train" and config.data.train_examples > 0:
            images, labels = (
                images[: config.data.train_examples],
                labels[: config.data.train_examples],
            )
        splits.append((images, labels))
    return splits


def make_feeds(config, splits, mesh):
    """(train feed, test feed) on `mesh` at config.data.placement ("auto" resolved by the
    splits' size against device memory, cnnjax.feed)."""
    try:
        placement = feed.resolve_placement(config.data.placement, feed.nbytes(*splits), mesh)
        if placement == "host":  # evaluation batches are split over the devices too
            parallel.check_divisible(config.train.eval_batch_size, mesh)
    except ValueError as error:
        raise RunError(f"{error}; nothing was changed") from None
    return tuple(feed.make(placement, split, mesh) for split in splits)


class Setup(NamedTuple):
    spec: models.Spec
    train_feed: feed.DeviceFeed | feed.HostFeed
    test_feed: feed.DeviceFeed | feed.HostFeed
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule
    state: train.TrainState  # freshly initialised from config.seed


def check_config(config) -> None:
    """Every choice-valued field a run reads, checked before any data loads or files appear."""
    checks = (
        (config.model.spec, sorted(models.SPECS), "model.spec"),
        (config.train.gradients, train.GRADIENTS, "train.gradients"),
        (config.optim.schedule, train.SCHEDULES, "optim.schedule"),
        (config.train.compute_dtype, train.COMPUTE_DTYPES, "train.compute_dtype"),
        (config.train.scan, train.SCANS, "train.scan"),
        (config.data.placement, feed.PLACEMENTS, "data.placement"),
    )
    for value, choices, name in checks:
        if value not in choices:
            raise RunError(f"config.{name} must be one of {tuple(choices)}, got {value!r}: pass "
                           f"--config.{name}=...; nothing was changed")  # fmt: skip


def setup(config, mesh=None) -> Setup:
    """Everything a run derives from its config: data feeds, network, optimizer, initial state,
    each placed on `mesh` (default: every device, cnnjax.parallel.make_mesh)."""
    check_config(config)
    spec = models.SPECS[config.model.spec]
    mesh = parallel.make_mesh() if mesh is None else mesh
    train_feed, test_feed = make_feeds(config, load_splits(config), mesh)
    images = train_feed.split[0]
    steps_per_epoch = images.shape[0] // config.train.batch_size
    if steps_per_epoch == 0:
        raise RunError(
            f"the training split has {images.shape[0]} examples, fewer than one batch "
            f"of {config.train.batch_size}; lower config.train.batch_size"
        )
    optimizer = train.make_optimizer(config.optim, steps_per_epoch, config.train.epochs)
    schedule = train.learning_rate_schedule(config.optim, steps_per_epoch, config.train.epochs)
    state = train.init_state(config.seed, spec, tuple(images.shape[1:]), optimizer)
    state = parallel.put_replicated(state, mesh)
    return Setup(spec, train_feed, test_feed, optimizer, schedule, state)


def evaluate(params, run: Setup, config) -> dict:
    """The test split's mean loss, accuracy and predictions under `params`."""
    return train.evaluate_fed(params, run.test_feed, spec=run.spec,
                              batch_size=config.train.eval_batch_size,
                              dtype=config.train.compute_dtype)  # fmt: skip


def _epoch(state, run_steps, num_examples, epoch, config, writer, schedule):
    """One epoch in chunks of config.train.steps_per_chunk steps, writing a metrics line per
    step after each chunk; returns (state, the epoch's mean loss and accuracy)."""
    idx_SB = train.epoch_indices(state, epoch, num_examples, config.train.batch_size)
    idx_SB = np.asarray(idx_SB)  # every process holds all of it; the feed places the shards
    chunk, seen = config.train.steps_per_chunk, {"loss": [], "accuracy": []}
    bar = progress.progress(len(idx_SB), f"epoch {epoch + 1}/{config.train.epochs}",
                            enabled=None if parallel.is_primary() else False)  # fmt: skip
    for start in range(0, len(idx_SB), chunk):
        first_step = int(state.step)
        state, metrics = run_steps(state, idx_SB[start : start + chunk])
        metrics = jax.device_get(metrics)
        with jax.numpy_dtype_promotion("standard"):  # optax's schedules mix int steps and floats
            rates = np.asarray(schedule(np.arange(first_step, first_step + len(metrics["loss"]))))
        for i, (loss, accuracy) in enumerate(
            zip(metrics["loss"], metrics["accuracy"], strict=True)
        ):
            writer.write(dict(kind="step", step=first_step + i + 1, epoch=epoch + 1, loss=loss,
                              accuracy=accuracy, learning_rate=rates[i]))  # fmt: skip
        if not np.all(np.isfinite(metrics["loss"])):
            bar.close()
            raise RunError(
                f"the loss became {metrics['loss'][~np.isfinite(metrics['loss'])][0]} in epoch "
                f"{epoch + 1} (by step {int(state.step)}); the run stopped and its last good "
                "checkpoint is kept. Lower --config.optim.learning_rate and start a new run."
            )
        seen["loss"] += list(metrics["loss"])
        seen["accuracy"] += list(metrics["accuracy"])
        bar.update(len(metrics["loss"]))
        bar.set_postfix(loss=f"{np.mean(seen['loss']):.4f}", acc=f"{np.mean(seen['accuracy']):.4f}")
    bar.close()
    return state, {k: float(np.mean(v)) for k, v in seen.items()}


def metrics_writer(workdir: Path, resume_step: int | None) -> report.MetricsWriter:
    """Process 0's writer of workdir/metrics.jsonl, after dropping the rows past resume_step
    (what a killed run logged after its checkpoint); elsewhere a writer to /dev/null."""
    if not parallel.is_primary():
        return report.MetricsWriter(os.devnull)
    if resume_step is not None:
        report.truncate_after(workdir / "metrics.jsonl", resume_step)
    return report.MetricsWriter(workdir / "metrics.jsonl")


def fit(config, workdir, *, resume: bool = False) -> dict:
    """Train `config` in `workdir` (see the module docstring); returns the final summary."""
    workdir, mesh = Path(workdir), parallel.make_mesh()
    check_config(config)
    try:
        parallel.check_divisible(config.train.batch_size, mesh)
    except ValueError as error:
        raise RunError(f"config.train.batch_size: {error}: pass --config.train.batch_size=N; "
                       "nothing was changed") from None  # fmt: skip
    prepare_workdir(workdir, config, resume)
    run = setup(config, mesh)
    manager = checkpoint_manager(workdir, config.train.checkpoints_kept)
    state, epochs_done = restore(manager, run.state) if resume else (run.state, 0)
    writer = metrics_writer(workdir, int(state.step) if resume else None)
    run_steps = train.make_train_steps(run.spec, run.optimizer, config, run.train_feed)
    num_examples = len(run.train_feed.split[1])
    test = None  # the last epoch's evaluation, reused by finish()
    for epoch in range(epochs_done, config.train.epochs):
        start = time.perf_counter()
        state, seen = _epoch(state, run_steps, num_examples, epoch, config, writer, run.schedule)
        test = evaluate(state.params, run, config)
        writer.write(dict(kind="epoch", step=int(state.step), epoch=epoch + 1,
                          train_loss=seen["loss"], train_accuracy=seen["accuracy"],
                          test_loss=test["loss"], test_accuracy=test["accuracy"],
                          seconds=time.perf_counter() - start))  # fmt: skip
        manager.save(epoch + 1, args=ocp.args.StandardSave(state))
    manager.wait_until_finished()
    return finish(workdir, config, state.params, run, test)


def last_checkpoint(workdir: Path):
    """(config, Setup, state, epochs done) of a run's last checkpoint; an error if it has none."""
    config = load_config(workdir)
    run = setup(config)
    state, epochs_done = restore(checkpoint_manager(workdir), run.state)
    if epochs_done == 0:
        raise RunError(f"{workdir} has no checkpoint yet (no epoch finished)")
    return config, run, state, epochs_done


def finish(workdir: Path, config, params, run: Setup, test=None) -> dict:
    """Evaluate, write summary.json and the plots, return the summary. Every process evaluates;
    process 0 alone reads the metrics file (steps, train_seconds: None elsewhere) and writes."""
    if test is None:  # a resumed run that had already finished: evaluate its final params
        test = evaluate(params, run, config)
    labels, spec = run.test_feed.split[1], run.spec
    num_classes = idx.num_classes(config.data.name)
    cm = report.confusion_matrix(np.asarray(test["predictions"]), labels, num_classes)
    rows = report.read_metrics(workdir / "metrics.jsonl") if parallel.is_primary() else None
    steps, seconds = (None, None) if rows is None else (
        max((r["step"] for r in rows), default=0),
        sum(r.get("seconds", 0.0) for r in rows if r["kind"] == "epoch"),
    )  # fmt: skip
    summary = dict(
        test_accuracy=float(test["accuracy"]), test_loss=float(test["loss"]),
        epochs=config.train.epochs, steps=steps, train_seconds=seconds,
        params_hash=params_hash(params),
        environment=dict(runtime.environment(), data_placement=run.train_feed.placement,
                         scan=train.uses_scan(config)),
        per_class_accuracy=dict(zip(idx.class_names(config.data.name),
                                    map(float, report.per_class_accuracy(cm)), strict=True)),
    )  # fmt: skip
    if rows is None:
        return summary
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plots.plot_curves(rows, workdir / "curves.png")
    first_conv = next(name for name, layer in zip(models.layer_names(spec), spec, strict=True)
                      if isinstance(layer, models.Conv))  # fmt: skip
    plots.plot_filters(np.asarray(params[first_conv]["kernel"]), workdir / "conv1_filters.png")
    plots.plot_confusion(cm, idx.class_names(config.data.name), workdir / "confusion.png")
    return summary
