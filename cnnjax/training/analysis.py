"""What a finished run says: its last checkpoint on the test split (accuracy per class, the
confusion matrix, per-example losses and gradient norms, the hardest examples), and from its
metrics file the seconds of training it took to reach a target accuracy."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import losses, models
from cnnjax.output import jsonl, plots, tables
from cnnjax.training import idx, run, train, workdir


def evaluation_report(directory) -> str:
    """The last checkpoint of a run on its test split: accuracy, per class, confusion matrix."""
    directory = Path(directory)
    config, setup, state, epochs_done = run.last_checkpoint(directory)
    test = run.evaluate(state, setup, config)
    num_classes = idx.num_classes(config.data.name)
    cm = tables.confusion_matrix(
        np.asarray(test["predictions"]), setup.test_feed.split[1], num_classes
    )
    names = idx.class_names(config.data.name)
    per_class = [(n, f"{a:.4f}") for n, a in zip(names, tables.per_class_accuracy(cm), strict=True)]
    lines = [
        f"{directory}: checkpoint after epoch {epochs_done}, {config.data.name} test split",
        f"accuracy {float(test['accuracy']):.4f}, loss {float(test['loss']):.4f}",
        "",
        tables.format_table(("class", "accuracy"), per_class, right=(1,)),
        "",
        "confusion matrix (rows: true class, columns: predicted class)",
        tables.format_confusion(cm, names),
    ]
    return "\n".join(lines)


def per_example_report(directory, top: int = 16, batch_size: int = 250) -> dict:
    """Per-example losses and gradient norms of a run's last checkpoint over its test split:
    per_example.npz, grad_norms.png (histogram) and hardest.png (the `top` highest losses)."""
    directory = Path(directory)
    config, setup, state, epochs_done = run.last_checkpoint(directory)

    @jax.jit
    def batch(x_uint8, y):  # in eval mode, with the network's state
        x, mode = train.to_float(x_uint8), dict(state=state.model_state)
        logits = models.batch_logits(state.params, x, setup.spec, **mode)
        norms = models.per_example_grad_norms(state.params, x, y, setup.spec, **mode)
        return losses.cross_entropy(logits, y), norms, jnp.argmax(logits, axis=-1)

    images, labels = setup.test_feed.split
    parts = [
        batch(images[i : i + batch_size], labels[i : i + batch_size])
        for i in range(0, len(labels), batch_size)
    ]
    loss_N, norm_N, pred_N = (np.concatenate([np.asarray(p[k]) for p in parts]) for k in range(3))
    np.savez(directory / "per_example.npz", loss=loss_N, grad_norm=norm_N, prediction=pred_N)
    plots.plot_histogram(
        norm_N,
        directory / "grad_norms.png",
        "per-example gradient norm",
        f"{config.data.name} test split, epoch {epochs_done}",
    )
    names = idx.class_names(config.data.name)
    hardest = np.argsort(-loss_N)[:top]
    captions = [f"{names[labels[i]]} -> {names[pred_N[i]]}\nloss {loss_N[i]:.2f}" for i in hardest]
    plots.plot_examples(
        images[hardest],
        captions,
        directory / "hardest.png",
        f"the {top} highest test losses (true -> predicted)",
    )
    return dict(
        examples=len(loss_N),
        mean_loss=float(loss_N.mean()),
        median_grad_norm=float(np.median(norm_N)),
        max_grad_norm=float(norm_N.max()),
        loss_norm_correlation=float(np.corrcoef(loss_N, norm_N)[0, 1]),
    )


# --------------------------------------------------------------------------- time to accuracy

TARGETS = {"fashion_mnist": 0.91, "mnist": 0.99}  # test accuracy that time_to_accuracy waits for


def time_to_accuracy(directory, target: float | None = None) -> dict:
    """Seconds of training until a finished run's test accuracy first reached `target` (None:
    TARGETS of the run's dataset, from its config.json).

    An epoch row of metrics.jsonl holds the wall seconds of that epoch (its steps, compilation
    in the first one, and its test evaluation); the time to the target is their sum up to and
    including the first epoch whose test_accuracy >= target. Returns {"run", "dataset", "target",
    "reached", "epoch", "seconds" (None when never reached), "best_accuracy", "epochs",
    "total_seconds"}."""
    directory = Path(directory)
    dataset = workdir.load_config(directory).data.name
    if target is None:
        if dataset not in TARGETS:
            raise ValueError(f"no default target for dataset {dataset!r}; pass a target")
        target = TARGETS[dataset]
    epochs = jsonl.read_metrics(directory / "metrics.jsonl", kind="epoch")
    best = max((r["test_accuracy"] for r in epochs), default=None)
    total = sum(r["seconds"] for r in epochs)
    result = dict(
        run=str(directory),
        dataset=dataset,
        target=target,
        reached=False,
        epoch=None,
        seconds=None,
        best_accuracy=best,
        epochs=len(epochs),
        total_seconds=total,
    )
    elapsed = 0.0
    for row in epochs:
        elapsed += row["seconds"]
        if row["test_accuracy"] >= target:
            return dict(result, reached=True, epoch=row["epoch"], seconds=elapsed)
    return result


def _time_to_accuracy_cells(r) -> tuple:
    epoch = r["epoch"] if r["reached"] else "never"
    seconds = "-" if r["seconds"] is None else f"{r['seconds']:.1f}"
    return (
        r["run"],
        r["dataset"],
        f"{r['target']:.2%}",
        epoch,
        seconds,
        f"{r['best_accuracy']:.2%}",
        r["epochs"],
        f"{r['total_seconds']:.1f}",
    )


def format_time_to_accuracy(rows) -> str:
    """time_to_accuracy's results, one run a row, as a text table."""
    header = (
        "run",
        "dataset",
        "target",
        "reached at epoch",
        "seconds",
        "best accuracy",
        "epochs",
        "run seconds",
    )
    body = [_time_to_accuracy_cells(r) for r in rows]
    return tables.format_table(header, body, right=range(2, 8))
