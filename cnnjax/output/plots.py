"""Plots of a run as PNG files: training curves, learned conv filters, the confusion matrix,
per-example views (a sweep's: cnnjax.output.sweep_plots).

Figures are drawn with `matplotlib.figure.Figure` on an Agg canvas, never pyplot, so importing
or calling this module selects no global backend and opens no window. Every function overwrites
`path` (creating its folder) and writes no timestamp or version into the PNG, so two identical
calls on one machine write identical bytes. Legend: K classes; kernels HWIO as in Flax.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure

from cnnjax.output import tables

DPI = 100
# Fewer per-step points than this are drawn as they are; more get a trailing moving mean over
# about 1/25 of the run (at most 100 steps), with the raw points kept faint behind it.
SMOOTH_FROM = 50


def new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save(figure: Figure, path) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # "Software": None drops the version string; Agg writes no creation time into a PNG.
    figure.savefig(path, format="png", dpi=DPI, metadata={"Software": None})


# ----------------------------------------------------------------------------------- curves


def _series(rows: Sequence[Mapping], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the rows that have `key`; NaN and inf become NaN (a gap)."""
    pairs = [(row["step"], row[key]) for row in rows if row.get(key) is not None]
    steps = np.array([step for step, _ in pairs], dtype=np.float64)
    values = np.array([value for _, value in pairs], dtype=np.float64)
    return steps, np.where(np.isfinite(values), values, np.nan)


def _moving_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last `window` finite values (fewer at the start); NaNs skipped."""
    finite = np.isfinite(values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    end = np.arange(1, len(values) + 1)
    start = np.maximum(end - window, 0)
    n = counts[end] - counts[start]
    return np.where(n > 0, (sums[end] - sums[start]) / np.maximum(n, 1), np.nan)


def _plot_steps(ax, step_rows, name: str, notes: Mapping[str, str]) -> None:
    steps, values = _series(step_rows, name)
    train = f"train{notes.get('train', '')}"
    if len(values) < SMOOTH_FROM:
        ax.plot(steps, values, color="C0", linewidth=1.0, label=f"{train} (per step)")
        return
    window = min(100, len(values) // 25)
    ax.plot(steps, values, color="C0", linewidth=0.6, alpha=0.25)
    smooth = _moving_mean(values, window)
    ax.plot(steps, smooth, color="C0", linewidth=1.4, label=f"{train} (mean of {window} steps)")


def _plot_epochs(ax, epoch_rows, name: str, notes: Mapping[str, str]) -> None:
    """Each `<split>_<name>` key of the epoch rows (train_loss, test_loss, ...) as points,
    labelled "<split><notes[split]> (epoch)"."""
    keys = dict.fromkeys(k for row in epoch_rows for k in row if k.endswith(f"_{name}"))
    for i, key in enumerate(keys):
        steps, values = _series(epoch_rows, key)
        split = key.removesuffix(f"_{name}")
        label = f"{split}{notes.get(split, '')} (epoch)"
        ax.plot(steps, values, "o--", color=f"C{i + 1}", markersize=5, linewidth=1.0, label=label)


def plot_curves(
    metrics_rows: Sequence[Mapping], path, title: str | None = None, *, label_smoothing=0.0
) -> None:
    """Loss and accuracy against the step, two panels side by side.

    Args:
      metrics_rows: rows as from `jsonl.read_metrics`. Rows of kind "step" with "loss" and
        "accuracy" keys give the per-step training line (smoothed once there are many); rows of
        kind "epoch" give one point per epoch for each `<split>_loss` / `<split>_accuracy` key
        (e.g. train_loss, test_accuracy). Every row needs its "step"; other keys are ignored.
      path: the PNG file to write.
      title: drawn above both panels.
      label_smoothing: the training loss's (config.train.label_smoothing; the test loss has
        none). If > 0 the loss panel's labels say which loss has it, and its title why the
        training loss sits higher.
    """
    step_rows = [row for row in metrics_rows if row.get("kind") == "step"]
    epoch_rows = [row for row in metrics_rows if row.get("kind") == "epoch"]
    figure = new_figure(11, 4.2)
    loss_ax, accuracy_ax = figure.subplots(1, 2)
    loss_notes = {}
    if label_smoothing > 0:
        loss_notes = {
            "train": f" loss, label smoothing {label_smoothing:g}",
            "test": " loss, no smoothing",
        }
        loss_ax.set_title(_smoothing_caption(label_smoothing), fontsize=9)
    for ax, name, notes in ((loss_ax, "loss", loss_notes), (accuracy_ax, "accuracy", {})):
        _plot_steps(ax, step_rows, name, notes)
        _plot_epochs(ax, epoch_rows, name, notes)
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    losses = np.concatenate([line.get_ydata() for line in loss_ax.get_lines()] + [[]])
    losses = losses[np.isfinite(losses)]
    if losses.size and losses.min() > 0 and losses.max() > 10 * losses.min():
        loss_ax.set_yscale("log")  # cross-entropy falls over decades; a linear axis hides the end
    if title:
        figure.suptitle(title)
    save(figure, path)


def _smoothing_caption(label_smoothing: float) -> str:
    return (
        f"the train loss is taken against labels smoothed by {label_smoothing:g}, whose own "
        "entropy\nit cannot fall below; the test loss against the true labels, so it sits lower"
    )


# ---------------------------------------------------------------------------------- filters


def plot_filters(kernel_HWIO, path, in_channel: int = 0, title: str | None = None) -> None:
    """The filters of a conv layer as a grid of small grayscale images, one per output channel.

    Args:
      kernel_HWIO: the layer's kernel (numpy or jax), e.g. params["conv1"]["kernel"].
      path: the PNG file to write.
      in_channel: which input channel's weights to show (0: the only one for grayscale input).
      title: defaults to a description of the kernel.
    The color scale is shared by all filters and symmetric around 0 (black negative, mid-gray
    zero, white positive), so filters can be compared with one another.
    """
    kernel_HWIO = np.asarray(kernel_HWIO).astype(np.float64)
    H, W, I, O = kernel_HWIO.shape
    filters_OHW = np.moveaxis(kernel_HWIO[:, :, in_channel, :], -1, 0)
    vmax = float(np.abs(filters_OHW).max()) or 1.0
    cols = math.ceil(math.sqrt(O))
    rows = math.ceil(O / cols)
    figure = new_figure(1.0 * cols + 1.2, 1.05 * rows + 0.6)
    axes = figure.subplots(rows, cols, squeeze=False)
    for o, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if o < O:
            image = ax.imshow(
                filters_OHW[o], cmap="gray", vmin=-vmax, vmax=vmax, interpolation="nearest"
            )
            ax.set_title(str(o), fontsize=8, pad=2)
    figure.colorbar(image, ax=axes, shrink=0.8, label="weight")
    figure.suptitle(title or f"{O} filters {H}x{W}, input channel {in_channel} of {I}")
    save(figure, path)


# ---------------------------------------------------------------------------- confusion


def _confusion_labels(cm_KK: np.ndarray, class_names) -> tuple[list[str], list[str]]:
    K = cm_KK.shape[0]
    names = [str(k) for k in range(K)] if class_names is None else [str(n) for n in class_names]
    if len(names) != K:
        raise ValueError(f"{len(names)} class names for a {K}x{K} confusion matrix")
    accuracy_K = tables.per_class_accuracy(cm_KK)
    rows = [
        f"{name} ({acc:.1%})" if np.isfinite(acc) else f"{name} (n/a)"
        for name, acc in zip(names, accuracy_K, strict=True)
    ]
    return names, rows


def plot_confusion(cm_KK, class_names: Sequence[str] | None, path) -> None:
    """The confusion matrix with its counts written in the cells.

    Args:
      cm_KK: counts, rows true classes, columns predictions (as from `tables.confusion_matrix`).
      class_names: K names (None: 0..K-1); each row label carries that class's accuracy.
      path: the PNG file to write.
    Cells are colored by the fraction of their true class (row-normalized, square-root scale so
    that small confusions show); zero counts off the diagonal are left blank.
    """
    cm_KK = np.asarray(cm_KK)
    K = cm_KK.shape[0]
    names, row_labels = _confusion_labels(cm_KK, class_names)
    totals_K1 = cm_KK.sum(axis=1, keepdims=True)
    fraction_KK = cm_KK / np.maximum(totals_K1, 1)
    side = max(4.5, 0.45 * K + 2.5)
    figure = new_figure(side + 1.5, side)
    ax = figure.subplots()
    norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0)
    image = ax.imshow(fraction_KK, cmap="Blues", norm=norm, interpolation="nearest")
    for t in range(K):
        for p in range(K):
            if cm_KK[t, p] or t == p:
                color = "white" if norm(fraction_KK[t, p]) > 0.6 else "black"
                ax.text(p, t, str(cm_KK[t, p]), ha="center", va="center", color=color, fontsize=8)
    tilt = K > 10 or max(len(name) for name in names) > 3  # long names would overlap
    ax.set_xticks(range(K), names, rotation=45 if tilt else 0, ha="right" if tilt else "center")
    ax.set_yticks(range(K), row_labels)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (per-class accuracy)")
    total = int(cm_KK.sum())
    overall = np.trace(cm_KK) / total if total else float("nan")
    ax.set_title(f"accuracy {overall:.2%} on {total} examples")
    figure.colorbar(image, ax=ax, shrink=0.8, label="fraction of the true class")
    save(figure, path)


# ---------------------------------------------------------------------- per-example views


def plot_histogram(values_N, path, xlabel: str, title: str | None = None, bins: int = 60) -> None:
    """A histogram of per-example values (e.g. gradient norms) on a log-spaced axis when they
    span more than a factor of 100, with the median marked."""
    values_N = np.asarray(values_N, np.float64)
    values_N = values_N[np.isfinite(values_N)]
    positive = values_N[values_N > 0]
    log_axis = positive.size == values_N.size and positive.size > 0
    log_axis = log_axis and positive.max() > 100 * positive.min()
    edges = np.geomspace(positive.min(), positive.max(), bins + 1) if log_axis else bins
    figure = new_figure(6.4, 3.6)
    ax = figure.subplots()
    ax.hist(values_N, bins=edges, color="tab:blue", alpha=0.8)
    ax.axvline(float(np.median(values_N)), color="tab:red", linestyle="--", label="median")
    ax.set_xscale("log" if log_axis else "linear")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("examples")
    ax.legend()
    ax.set_title(title or f"{values_N.size} examples")
    save(figure, path)


def plot_examples(images_NHWC, captions: Sequence[str], path, title: str | None = None) -> None:
    """A grid of grayscale examples (first channel), each with its caption."""
    images_NHWC = np.asarray(images_NHWC)
    n = len(images_NHWC)
    cols = min(n, 8)
    rows = math.ceil(n / cols)
    figure = new_figure(1.5 * cols, 1.75 * rows + 0.4)
    axes = figure.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < n:
            ax.imshow(images_NHWC[i, :, :, 0], cmap="gray_r", interpolation="nearest")
            ax.set_title(captions[i], fontsize=7, pad=2)
    if title:
        figure.suptitle(title)
    save(figure, path)
