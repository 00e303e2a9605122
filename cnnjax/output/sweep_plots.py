"""A sweep's plots: test accuracy against a swept number or over a grid of two, a search's
members in the order asked, and sweeps compared at one budget of member-epochs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from cnnjax.output import plots


def plot_sweep_line(accuracy_by_x: Mapping[float, Sequence[float]], path, xlabel: str) -> None:
    """Test accuracy against one swept number: the mean over seeds as a line, the min-max band
    over seeds shaded, every seed's run a dot; a log x axis when x spans more than 10x."""
    xs = np.array(sorted(accuracy_by_x), np.float64)
    runs = [np.asarray(accuracy_by_x[x], np.float64) * 100 for x in xs]
    figure = plots.new_figure(6.4, 4.0)
    ax = figure.subplots()
    low, high = [r.min() for r in runs], [r.max() for r in runs]
    ax.fill_between(xs, low, high, alpha=0.25, color="tab:blue", label="min-max over seeds")
    ax.plot(xs, [r.mean() for r in runs], "o-", color="tab:blue", label="mean over seeds")
    for x, r in zip(xs, runs, strict=True):
        ax.plot(np.full(r.shape, x), r, ".", color="black", alpha=0.6)
    if xs.min() > 0 and xs.max() > 10 * xs.min():
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"{sum(len(r) for r in runs)} runs, {len(xs)} settings")
    plots.save(figure, path)


def _tick_label(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def plot_sweep_heatmap(grid_YX, x_values, y_values, path, xlabel: str, ylabel: str) -> None:
    """Mean test accuracy over a 2-D grid of settings, the value written in each cell (NaN: no
    run that did not diverge)."""
    grid_YX = np.asarray(grid_YX, np.float64) * 100
    figure = plots.new_figure(1.1 * len(x_values) + 2.5, 0.7 * len(y_values) + 1.8)
    ax = figure.subplots()
    image = ax.imshow(grid_YX, cmap="viridis", aspect="auto", interpolation="nearest")
    for (i, j), value in np.ndenumerate(grid_YX):
        text = f"{value:.2f}" if np.isfinite(value) else "n/a"
        ax.text(j, i, text, ha="center", va="center", color="white", fontsize=8)
    ax.set_xticks(range(len(x_values)), [_tick_label(v) for v in x_values])
    ax.set_yticks(range(len(y_values)), [_tick_label(v) for v in y_values])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("mean test accuracy (%) over seeds")
    figure.colorbar(image, ax=ax, shrink=0.8)
    plots.save(figure, path)


def plot_search_progress(accuracy_by_member: Sequence[float], path, title: str) -> None:
    """A search's members in the order they were asked: each one's test accuracy (NaN: it
    diverged) and the best so far, so a sampler that learns shows its later members higher."""
    values = np.asarray(accuracy_by_member, np.float64) * 100
    members = np.arange(1, len(values) + 1)
    best = np.fmax.accumulate(values) if len(values) else values
    figure = plots.new_figure(6.4, 4.0)
    ax = figure.subplots()
    ax.plot(members, values, ".", color="black", alpha=0.7, label="member")
    ax.step(members, best, where="post", color="tab:blue", label="best so far")
    ax.set_xlabel("member (in the order asked)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    plots.save(figure, path)


def plot_budget_curves(
    curves: Mapping[str, Sequence[Mapping]], target: float, path, reference: str
) -> None:
    """Each sweep's test accuracy of its best model so far against member-epochs spent: the
    mean over seeds as a step line, the min-max band shaded, and `reference`'s final mean as a
    dashed line."""
    figure = plots.new_figure(6.4, 4.2)
    ax = figure.subplots()
    budget = max(int(c["spent"][-1]) for cs in curves.values() for c in cs)
    xs = np.arange(1, budget + 1)
    for name, cs in curves.items():
        ys = []
        for c in cs:
            i = np.searchsorted(np.asarray(c["spent"]), xs, side="right") - 1
            ys.append(np.where(i >= 0, np.asarray(c["test_accuracy"])[np.maximum(i, 0)], np.nan))
        ys = np.asarray(ys) * 100
        (line,) = ax.step(xs, np.nanmean(ys, axis=0), where="post", label=f"{name} (mean)")
        ax.fill_between(xs, np.nanmin(ys, axis=0), np.nanmax(ys, axis=0), step="post",
                        alpha=0.15, color=line.get_color())  # fmt: skip
    ax.axhline(100 * target, color="black", linestyle="--", linewidth=1,
               label=f"{reference}'s final mean")  # fmt: skip
    ax.set_xlabel("member-epochs spent")
    ax.set_ylabel("test accuracy of the best model so far (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{len(next(iter(curves.values())))} seeds each; best by validation accuracy")
    plots.save(figure, path)
