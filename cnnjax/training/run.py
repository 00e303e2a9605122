"""A training run: its config's data, network, optimizer and state (setup), the epoch loop that
writes metrics and checkpoints (fit), and the summary and plots at its end (finish).

A run directory holds config.json (the resolved config, cnnjax.training.workdir), metrics.jsonl
(one JSON line per step and per epoch), checkpoints/<epochs done>/ (cnnjax.training.checkpoints),
and at the end summary.json and PNG plots. An existing run is never overwritten: continuing it
takes resume=True, with the same config (from its newest checkpoint that verifies); resuming a
finished run writes nothing. A run holds its directory's lock (workdir.claim) while it works,
and stops with a RunError, before checkpointing it, at a state whose loss, params or test loss
have blown up, so its last checkpoint is its last good one.

Training is data parallel over every device of every process (cnnjax.parallel): the state is
replicated, each step's batch is split over the devices; the data reach them through a feed
(cnnjax.training.feed: the splits on every device, or streamed from host memory). Every process
takes part in every computation and checkpoint; only process 0 writes the other files.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
import optax

from cnnjax import faults, models, parallel, runtime
from cnnjax.output import jsonl, plots, progress, tables
from cnnjax.training import RunError, checkpoints, data, feed, idx, settings, train, workdir


def load_splits(config):
    """[(train images, labels), (test images, labels)] as host arrays (uint8 images), and a
    third, (validation images, labels), if config.data.validation_examples = V > 0: the last V
    examples of the training split, held out (the same ones whatever the seed). Training uses
    the examples before them, only the first config.data.train_examples if that is > 0."""
    splits = []
    for split in ("train", "test"):
        images, labels = data.load(
            config.data.name,
            split,
            source_dir=config.data.source_dir or None,
            data_dir=config.data.tfds_dir or None,
        )
        splits.append((images, labels))
    (images, labels), held = splits[0], config.data.validation_examples
    if held >= len(labels):
        raise RunError(
            f"config.data.validation_examples={held} leaves no training examples of the "
            f"{len(labels):,} in {config.data.name}'s training split; hold out fewer"
        )
    if held > 0:
        splits.append((images[-held:], labels[-held:]))
        images, labels = images[:-held], labels[:-held]
    if config.data.train_examples > 0:
        images, labels = images[: config.data.train_examples], labels[: config.data.train_examples]
    splits[0] = (images, labels)
    return splits


def make_feeds(config, splits, mesh):
    """(train feed, test feed) on `mesh` at config.data.placement ("auto" resolved by the
    splits' size against device memory, cnnjax.training.feed)."""
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


def setup(config, mesh=None) -> Setup:
    """Everything a run derives from its config: data feeds, network, optimizer, initial state,
    each placed on `mesh` (default: every device, cnnjax.parallel.make_mesh)."""
    settings.check(config)
    spec = settings.spec(config)
    mesh = parallel.make_mesh() if mesh is None else mesh
    train_feed, test_feed, *_ = make_feeds(config, load_splits(config), mesh)  # runs: no validation
    images = train_feed.split[0]
    steps_per_epoch = settings.steps_per_epoch(images.shape[0], config.train.batch_size)
    optimizer = train.make_optimizer(config.optim, steps_per_epoch, config.train.epochs)
    schedule = train.learning_rate_schedule(config.optim, steps_per_epoch, config.train.epochs)
    state = train.init_state(config.seed, spec, tuple(images.shape[1:]), optimizer)
    state = parallel.put_replicated(state, mesh)
    return Setup(spec, train_feed, test_feed, optimizer, schedule, state)


def evaluate(state: train.TrainState, run: Setup, config) -> dict:
    """The test split's mean loss, accuracy and predictions under `state`'s params and network
    state, in eval mode (with test-time flips if config.train.eval_flip)."""
    return train.evaluate_fed(
        state.params,
        run.test_feed,
        spec=run.spec,
        batch_size=config.train.eval_batch_size,
        dtype=config.train.compute_dtype,
        model_state=state.model_state,
        flip=config.train.eval_flip,
    )


def _epoch(state, run_steps, num_examples, epoch, config, writer, schedule):
    """One epoch in chunks of config.train.steps_per_chunk steps, writing a metrics line per
    step after each chunk; returns (state, the epoch's mean loss and accuracy)."""
    idx_SB = train.epoch_indices(state, epoch, num_examples, config.train.batch_size)
    idx_SB = np.asarray(idx_SB)  # every process holds all of it; the feed places the shards
    chunk, seen = config.train.steps_per_chunk, {"loss": [], "accuracy": []}
    bar = progress.progress(
        len(idx_SB),
        f"epoch {epoch + 1}/{config.train.epochs}",
        enabled=None if parallel.is_primary() else False,
        images_per_step=config.train.batch_size,
    )
    for start in range(0, len(idx_SB), chunk):
        first_step = int(state.step)
        state, metrics = run_steps(state, idx_SB[start : start + chunk])
        metrics = jax.device_get(metrics)
        with jax.numpy_dtype_promotion("standard"):  # optax's schedules mix int steps and floats
            rates = np.asarray(schedule(np.arange(first_step, first_step + len(metrics["loss"]))))
        for i, (loss, accuracy) in enumerate(
            zip(metrics["loss"], metrics["accuracy"], strict=True)
        ):
            writer.write(
                dict(
                    kind="step",
                    step=first_step + i + 1,
                    epoch=epoch + 1,
                    loss=loss,
                    accuracy=accuracy,
                    learning_rate=rates[i],
                )
            )
        if not np.all(np.isfinite(metrics["loss"])):
            bar.close()
            bad = metrics["loss"][~np.isfinite(metrics["loss"])][0]
            what = f"the loss became {bad} in epoch {epoch + 1} (by step {int(state.step)})"
            raise _diverged(what, epoch)
        seen["loss"] += list(metrics["loss"])
        seen["accuracy"] += list(metrics["accuracy"])
        bar.update(len(metrics["loss"]))
        bar.set_metrics(loss=np.mean(seen["loss"]), acc=np.mean(seen["accuracy"]))
    bar.close()
    return state, {k: float(np.mean(v)) for k, v in seen.items()}


def fit(config, directory, *, resume: bool = False) -> dict:
    """Train `config` in the run directory `directory` (see the module docstring); returns the
    final summary. Resuming a finished run trains and writes nothing: it says so and returns
    the summary it wrote."""
    directory, mesh = Path(directory), parallel.make_mesh()
    settings.check(config, mesh)
    data.prepare_section(config.data)  # bad IDX files stop a run before it writes
    workdir.claim_run(directory, config, resume=resume)
    try:
        if resume and (summary := _finished(directory, config)) is not None:
            return summary
        return _train(config, directory, mesh, resume)
    finally:
        workdir.release(directory)


def _train(config, directory: Path, mesh, resume: bool) -> dict:
    run = setup(config, mesh)
    saved = checkpoints.manager(directory, config.train.checkpoints_kept)
    state, epochs_done = checkpoints.restore(saved, run.state) if resume else (run.state, 0)
    writer = workdir.metrics_writer(directory, int(state.step) if resume else None)
    run_steps = train.make_train_steps(run.spec, run.optimizer, config, run.train_feed)
    num_examples = len(run.train_feed.split[1])
    test = None  # the last epoch's evaluation, reused by finish()
    for epoch in range(epochs_done, config.train.epochs):
        start = time.perf_counter()
        state, seen = _epoch(state, run_steps, num_examples, epoch, config, writer, run.schedule)
        test = evaluate(state, run, config)
        writer.write(
            dict(
                kind="epoch",
                step=int(state.step),
                epoch=epoch + 1,
                train_loss=seen["loss"],
                train_accuracy=seen["accuracy"],
                test_loss=test["loss"],
                test_accuracy=test["accuracy"],
                seconds=time.perf_counter() - start,
            )
        )
        _check_good(state, float(test["loss"]), epoch)
        checkpoints.save(saved, epoch + 1, state)
        faults.point("run.epoch_end")
    saved.wait_until_finished()
    return finish(directory, config, state, run, test)


def _check_good(state, test_loss: float, epoch: int) -> None:
    """A RunError unless the state after `epoch` (0-based) is one worth checkpointing: finite
    params, and a finite test loss below train.DIVERGED_LOSS."""
    step = int(state.step)
    params = jax.device_get(state.params)
    if not all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(params)):
        what = f"the params became non-finite in epoch {epoch + 1} (by step {step})"
        raise _diverged(what, epoch)
    if not test_loss < train.DIVERGED_LOSS:  # also NaN
        raise _diverged(
            f"the test loss became {test_loss:.4g} after epoch {epoch + 1} (step {step}; above "
            f"{train.DIVERGED_LOSS:.0e} the network has blown up)",
            epoch,
        )


def _diverged(what: str, epoch: int) -> RunError:
    """The error of a run that diverged in `epoch` (0-based): its last good checkpoint is the
    one after the epoch before, if any."""
    kept = f"its last good checkpoint (epoch {epoch}) is kept" if epoch else "it has no checkpoint"
    return RunError(
        f"{what}; the run stopped and {kept}. Lower --config.optim.learning_rate (or the "
        "schedule's --config.optim.decay_factor) and start a new run."
    )


def _finished(directory: Path, config) -> dict | None:
    """The summary of a run that finished all its epochs (it has summary.json and the last
    epoch's checkpoint), after one line saying so; else None."""
    path = directory / "summary.json"
    if not path.exists() or config.train.epochs not in checkpoints.saved_epochs(directory):
        return None
    if parallel.is_primary():
        print(
            f"{directory} had finished training (epoch {config.train.epochs} of "
            f"{config.train.epochs}): nothing was trained or written. Its summary.json:",
            flush=True,
        )
    return json.loads(path.read_text())


def last_checkpoint(directory: Path):
    """(config, Setup, state, epochs done) of a run's last checkpoint; an error if it has none."""
    config = workdir.load_config(directory)
    run = setup(config)
    state, epochs_done = checkpoints.restore(checkpoints.manager(directory), run.state)
    if epochs_done == 0:
        raise RunError(f"{directory} has no good checkpoint (none saved, or none that verifies)")
    return config, run, state, epochs_done


def finish(directory: Path, config, state: train.TrainState, run: Setup, test=None) -> dict:
    """Evaluate, write summary.json and the plots, return the summary. Every process evaluates;
    process 0 alone reads the metrics file (steps, train_seconds: None elsewhere) and writes."""
    params = state.params
    if test is None:  # a resumed run that had already finished: evaluate its final state
        test = evaluate(state, run, config)
    names = idx.class_names(config.data.name)
    predictions, labels = np.asarray(test["predictions"]), run.test_feed.split[1]
    cm = tables.confusion_matrix(predictions, labels, len(names))
    rows = jsonl.read_metrics(directory / "metrics.jsonl") if parallel.is_primary() else None
    summary = dict(
        test_accuracy=float(test["accuracy"]),
        test_loss=float(test["loss"]),
        epochs=config.train.epochs,
        steps=None if rows is None else max((r["step"] for r in rows), default=0),
        train_seconds=None if rows is None else _train_seconds(rows),
        params_hash=checkpoints.params_hash(params),
        environment=dict(
            runtime.environment(),
            data_placement=run.train_feed.placement,
            scan=train.uses_scan(config),
        ),
        per_class_accuracy=dict(zip(names, map(float, tables.per_class_accuracy(cm)), strict=True)),
    )
    if rows is None:
        return summary
    (directory / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plots.plot_curves(rows, directory / "curves.png", label_smoothing=config.train.label_smoothing)
    plots.plot_filters(_first_kernel(params, run.spec), directory / "conv1_filters.png")
    plots.plot_confusion(cm, names, directory / "confusion.png")
    return summary


def format_summary(summary: dict) -> str:
    """finish()'s summary as a two-column table (its nested records, e.g. the environment, are
    in summary.json)."""
    rows = [
        (name, f"{value:.4f}" if isinstance(value, float) else str(value))
        for name, value in summary.items()
        if not isinstance(value, dict)
    ]
    return tables.format_table(("summary", ""), rows)


def _train_seconds(rows) -> float:
    return sum(r.get("seconds", 0.0) for r in rows if r["kind"] == "epoch")


def _first_kernel(params, spec) -> np.ndarray:
    """The first convolution's kernel_HWIO (the filters worth drawing)."""
    names = models.layer_names(spec)
    first = next(n for n, layer in zip(names, spec, strict=True) if isinstance(layer, models.Conv))
    return np.asarray(params[first]["kernel"])
