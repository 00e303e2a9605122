"""A training run on disk: its directory, resolved config, checkpoints, metrics, plots; resume.

A run directory holds config.json (the resolved config), metrics.jsonl (one JSON line per step
and per epoch), checkpoints/<epochs done>/ (orbax), and at the end summary.json and PNG plots.
An existing run is never overwritten: continuing it takes resume=True, with the same config.

Training is data parallel over every device of every process (cnnjax.parallel): the state and
the data are replicated, each step's batch is split over the devices. Every process takes part
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
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from cnnjax import data, idx, losses, models, parallel, plots, progress, report, train


class RunError(RuntimeError):
    """A run that cannot start or go on; the message says why and what to do."""


def params_hash(params) -> str:
    """sha256 over every parameter's bytes in tree order: equal hashes, bit-identical params."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        digest.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
    return digest.hexdigest()


def prepare_workdir(workdir: Path, config, resume: bool) -> None:
    """Create the run directory, or check that resuming continues the same config. Every
    process checks (they see the same files, so they fail alike); then process 0 writes."""
    config_path = workdir / "config.json"
    resolved = config.to_json_best_effort(indent=2, sort_keys=True)
    if resume:
        if not config_path.exists():
            raise RunError(f"nothing to resume in {workdir}: it has no config.json")
        if json.loads(config_path.read_text()) != json.loads(resolved):
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
        config_path.write_text(resolved + "\n")


def load_config(workdir) -> ml_collections.ConfigDict:
    """The resolved config a run was started with."""
    path = Path(workdir) / "config.json"
    if not path.exists():
        raise RunError(f"{workdir} is not a run directory: it has no config.json")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


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


def load_data(config, mesh=None):
    """((train images, labels), (test images, labels)) as device arrays: uint8 images; the
    first config.data.train_examples training examples only, if that is > 0. Given a mesh,
    replicated on every device of it, else on the default device."""
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
        if mesh is None:
            splits.append((jax.device_put(images), jax.device_put(labels)))
        else:
            splits.append(parallel.put_replicated((images, labels), mesh))
    return splits


class Setup(NamedTuple):
    spec: models.Spec
    train_split: tuple
    test_split: tuple
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule
    state: train.TrainState  # freshly initialised from config.seed


def setup(config, mesh=None) -> Setup:
    """Everything a run derives from its config: data, network, optimizer, initial state, each
    replicated on `mesh` (default: every device, cnnjax.parallel.make_mesh)."""
    if config.model.spec not in models.SPECS:
        raise RunError(f"config.model.spec must be one of {sorted(models.SPECS)}, got "
                       f"{config.model.spec!r}")  # fmt: skip
    spec = models.SPECS[config.model.spec]
    mesh = parallel.make_mesh() if mesh is None else mesh
    train_split, test_split = load_data(config, mesh)
    steps_per_epoch = train_split[0].shape[0] // config.train.batch_size
    if steps_per_epoch == 0:
        raise RunError(
            f"the training split has {train_split[0].shape[0]} examples, fewer than one batch "
            f"of {config.train.batch_size}; lower config.train.batch_size"
        )
    optimizer = train.make_optimizer(config.optim, steps_per_epoch, config.train.epochs)
    schedule = train.learning_rate_schedule(config.optim, steps_per_epoch, config.train.epochs)
    state = train.init_state(config.seed, spec, tuple(train_split[0].shape[1:]), optimizer)
    state = parallel.put_replicated(state, mesh)
    return Setup(spec, train_split, test_split, optimizer, schedule, state)


def _epoch(state, run_steps, train_split, epoch, config, writer, schedule):
    """One epoch in chunks of config.train.steps_per_chunk steps, writing a metrics line per
    step after each chunk; returns (state, the epoch's mean loss and accuracy)."""
    images, labels = train_split
    idx_SB = train.epoch_indices(state, epoch, images.shape[0], config.train.batch_size)
    idx_SB = np.asarray(idx_SB)  # every process holds all of it; run_steps places the shards
    chunk, seen = config.train.steps_per_chunk, {"loss": [], "accuracy": []}
    bar = progress.progress(len(idx_SB), f"epoch {epoch + 1}/{config.train.epochs}",
                          enabled=None if parallel.is_primary() else False)  # fmt: skip
    for start in range(0, len(idx_SB), chunk):
        first_step = int(state.step)
        state, metrics = run_steps(state, images, labels, idx_SB[start : start + chunk])
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
    put_indices = lambda idx, axis: parallel.put_sharded(idx, mesh, axis)  # noqa: E731
    run_steps = train.make_train_steps(run.spec, run.optimizer, config, put_indices)
    test = None  # the last epoch's evaluation, reused by finish()
    for epoch in range(epochs_done, config.train.epochs):
        start = time.perf_counter()
        state, seen = _epoch(state, run_steps, run.train_split, epoch, config, writer, run.schedule)
        test = train.evaluate(state.params, *run.test_split, spec=run.spec,
                              batch_size=config.train.eval_batch_size)  # fmt: skip
        writer.write(dict(kind="epoch", step=int(state.step), epoch=epoch + 1,
                          train_loss=seen["loss"], train_accuracy=seen["accuracy"],
                          test_loss=test["loss"], test_accuracy=test["accuracy"],
                          seconds=time.perf_counter() - start))  # fmt: skip
        manager.save(epoch + 1, args=ocp.args.StandardSave(state))
    manager.wait_until_finished()
    return finish(workdir, config, state.params, run.spec, run.test_split, test)


def last_checkpoint(workdir: Path):
    """(config, Setup, state, epochs done) of a run's last checkpoint; an error if it has none."""
    config = load_config(workdir)
    run = setup(config)
    state, epochs_done = restore(checkpoint_manager(workdir), run.state)
    if epochs_done == 0:
        raise RunError(f"{workdir} has no checkpoint yet (no epoch finished)")
    return config, run, state, epochs_done


def evaluation_report(workdir) -> str:
    """The last checkpoint of a run on its test split: accuracy, per class, confusion matrix."""
    workdir = Path(workdir)
    config, run, state, epochs_done = last_checkpoint(workdir)
    test = train.evaluate(state.params, *run.test_split, spec=run.spec,
                          batch_size=config.train.eval_batch_size)  # fmt: skip
    num_classes = idx.num_classes(config.data.name)
    cm = report.confusion_matrix(np.asarray(test["predictions"]), np.asarray(run.test_split[1]),
                                 num_classes)  # fmt: skip
    names = idx.class_names(config.data.name)
    per_class = [(n, f"{a:.4f}") for n, a in zip(names, report.per_class_accuracy(cm), strict=True)]
    lines = [
        f"{workdir}: checkpoint after epoch {epochs_done}, {config.data.name} test split",
        f"accuracy {float(test['accuracy']):.4f}, loss {float(test['loss']):.4f}", "",
        report.format_table(("class", "accuracy"), per_class, right=(1,)), "",
        "confusion matrix (rows: true class, columns: predicted)",
        report.format_table([str(k) for k in range(num_classes)], cm.tolist(),
                            right=range(num_classes)),
    ]  # fmt: skip
    return "\n".join(lines)


def finish(workdir: Path, config, params, spec, test_split, test=None) -> dict:
    """Evaluate, write summary.json and the plots, return the summary. Every process evaluates;
    process 0 alone reads the metrics file (steps, train_seconds: None elsewhere) and writes."""
    if test is None:  # a resumed run that had already finished: evaluate its final params
        test = train.evaluate(params, *test_split, spec=spec,
                              batch_size=config.train.eval_batch_size)  # fmt: skip
    labels = np.asarray(test_split[1])
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


def per_example_report(workdir, top: int = 16, batch_size: int = 250) -> dict:
    """Per-example losses and gradient norms of a run's last checkpoint over its test split:
    per_example.npz, grad_norms.png (histogram) and hardest.png (the `top` highest losses)."""
    workdir = Path(workdir)
    config, run, state, epochs_done = last_checkpoint(workdir)

    @jax.jit
    def batch(x_uint8, y):
        x = train.to_float(x_uint8)
        logits = models.batch_logits(state.params, x, run.spec)
        norms = models.per_example_grad_norms(state.params, x, y, run.spec)
        return losses.cross_entropy(logits, y), norms, jnp.argmax(logits, axis=-1)

    images, labels = (np.asarray(a) for a in run.test_split)
    parts = [batch(images[i : i + batch_size], labels[i : i + batch_size])
             for i in range(0, len(labels), batch_size)]  # fmt: skip
    loss_N, norm_N, pred_N = (np.concatenate([np.asarray(p[k]) for p in parts]) for k in range(3))
    np.savez(workdir / "per_example.npz", loss=loss_N, grad_norm=norm_N, prediction=pred_N)
    plots.plot_histogram(norm_N, workdir / "grad_norms.png", "per-example gradient norm",
                         f"{config.data.name} test split, epoch {epochs_done}")  # fmt: skip
    names = idx.class_names(config.data.name)
    hardest = np.argsort(-loss_N)[:top]
    captions = [f"{names[labels[i]]} -> {names[pred_N[i]]}\nloss {loss_N[i]:.2f}" for i in hardest]
    plots.plot_examples(images[hardest], captions, workdir / "hardest.png",
                        f"the {top} highest test losses (true -> predicted)")  # fmt: skip
    return dict(
        examples=len(loss_N), mean_loss=float(loss_N.mean()),
        median_grad_norm=float(np.median(norm_N)), max_grad_norm=float(norm_N.max()),
        loss_norm_correlation=float(np.corrcoef(loss_N, norm_N)[0, 1]),
    )  # fmt: skip
