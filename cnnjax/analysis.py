"""What a finished run's last checkpoint says about its test split: accuracy per class and the
confusion matrix; per-example losses and gradient norms, and the hardest examples."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import idx, losses, models, plots, report, run, train


def evaluation_report(workdir) -> str:
    """The last checkpoint of a run on its test split: accuracy, per class, confusion matrix."""
    workdir = Path(workdir)
    config, setup, state, epochs_done = run.last_checkpoint(workdir)
    test = run.evaluate(state.params, setup, config)
    num_classes = idx.num_classes(config.data.name)
    cm = report.confusion_matrix(np.asarray(test["predictions"]), setup.test_feed.split[1],
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


def per_example_report(workdir, top: int = 16, batch_size: int = 250) -> dict:
    """Per-example losses and gradient norms of a run's last checkpoint over its test split:
    per_example.npz, grad_norms.png (histogram) and hardest.png (the `top` highest losses)."""
    workdir = Path(workdir)
    config, setup, state, epochs_done = run.last_checkpoint(workdir)

    @jax.jit
    def batch(x_uint8, y):
        x = train.to_float(x_uint8)
        logits = models.batch_logits(state.params, x, setup.spec)
        norms = models.per_example_grad_norms(state.params, x, y, setup.spec)
        return losses.cross_entropy(logits, y), norms, jnp.argmax(logits, axis=-1)

    images, labels = setup.test_feed.split
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
