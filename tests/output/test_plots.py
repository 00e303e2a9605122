"""cnnjax.output.plots: deterministic PNGs of the expected size, and the values each figure
draws (read back from the Figure as it is saved)."""

import math

import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

from cnnjax.output import plots, sweep_plots, tables

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _metrics_rows(steps=120, steps_per_epoch=40):
    rng = np.random.default_rng(0)
    rows = []
    for step in range(1, steps + 1):
        loss = 2.3 * np.exp(-step / 30) + 0.05 + 0.05 * rng.random()
        rows.append({"kind": "step", "step": step, "loss": loss, "accuracy": 1 - loss / 2.5})
        if step % steps_per_epoch == 0:
            rows.append(
                {"kind": "epoch", "step": step, "train_loss": loss, "test_loss": loss + 0.02}
                | {"train_accuracy": 1 - loss / 2.5, "test_accuracy": 1 - loss / 2.4}
            )
    rows[5]["loss"] = math.nan  # a NaN step draws a gap, not an error
    return rows


def _cases():
    rng = np.random.default_rng(1)
    kernel_HWIO = jnp.asarray(rng.normal(size=(5, 5, 1, 8)), dtype=jnp.float32)
    cm_KK = tables.confusion_matrix(rng.integers(0, 3, 50), rng.integers(0, 3, 50), 3)
    return {
        # name: (draw into path, expected (height, width) in pixels at plots.DPI = 100)
        "curves": (lambda path: plots.plot_curves(_metrics_rows(), path, "run"), (420, 1100)),
        "filters": (lambda path: plots.plot_filters(kernel_HWIO, path), (375, 420)),
        "confusion": (lambda path: plots.plot_confusion(cm_KK, "abc", path), (450, 600)),
    }


@pytest.mark.parametrize("name", sorted(_cases()))
def test_each_plot_writes_a_deterministic_png_of_the_expected_size(name, tmp_path):
    draw, (height, width) = _cases()[name]
    first, second = tmp_path / "sub" / f"{name}.png", tmp_path / f"{name}_again.png"
    draw(first)
    draw(second)
    assert first.read_bytes()[:8] == PNG_SIGNATURE
    assert matplotlib.image.imread(first).shape == (height, width, 4)
    assert first.read_bytes() == second.read_bytes()
    assert b"matplotlib" not in first.read_bytes()  # no version string in the metadata


def test_plot_confusion_checks_the_number_of_names(tmp_path):
    with pytest.raises(ValueError, match="2 class names"):
        plots.plot_confusion(np.eye(3, dtype=int), ["a", "b"], tmp_path / "cm.png")


def test_moving_mean_skips_nans_and_shortens_the_first_windows():
    values = np.array([1.0, 3.0, np.nan, 5.0, 7.0])
    np.testing.assert_allclose(plots._moving_mean(values, 2), [1.0, 2.0, 3.0, 5.0, 6.0])


# ------------------------------------------------------------------- what each figure draws


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plots draw, captured as they are saved (the PNG is still written)."""
    figures = []
    real_save = plots.save

    def capture(figure, path):
        figures.append(figure)
        real_save(figure, path)

    monkeypatch.setattr(plots, "save", capture)
    return figures


def _png(path):
    """The PNG read back: (height, width, 4) floats; it must show more than one color."""
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[2] == 4 and np.ptp(pixels[..., :3]) > 0.5  # not a blank canvas
    return pixels


def _line(ax, label):
    (line,) = [line for line in ax.get_lines() if line.get_label() == label]
    return line


def _trailing_mean(values, window):
    """The documented smoothing, written out: the mean of the finite values among the last
    `window` ones (fewer at the start)."""
    out = []
    for i in range(len(values)):
        recent = values[max(0, i - window + 1) : i + 1]
        finite = recent[np.isfinite(recent)]
        out.append(finite.mean() if finite.size else np.nan)
    return np.array(out)


def _assert_curves_match(figure, rows):
    step_rows = [r for r in rows if r["kind"] == "step"]
    epoch_rows = [r for r in rows if r["kind"] == "epoch"]
    steps = np.array([r["step"] for r in step_rows], np.float64)
    window = min(100, len(step_rows) // 25)
    loss_ax, accuracy_ax = figure.axes
    for ax, name in ((loss_ax, "loss"), (accuracy_ax, "accuracy")):
        values = np.array([r[name] for r in step_rows], np.float64)
        raw, smooth = ax.get_lines()[:2]
        np.testing.assert_array_equal(raw.get_xdata(), steps)
        np.testing.assert_array_equal(raw.get_ydata(), values)  # NaN where the step was NaN
        assert smooth.get_label() == f"train (mean of {window} steps)"
        np.testing.assert_allclose(smooth.get_ydata(), _trailing_mean(values, window), rtol=1e-12)
        for split in ("train", "test"):
            points = _line(ax, f"{split} (epoch)")
            np.testing.assert_array_equal(points.get_xdata(), [r["step"] for r in epoch_rows])
            np.testing.assert_array_equal(
                points.get_ydata(), [r[f"{split}_{name}"] for r in epoch_rows]
            )


def test_plot_curves_draws_the_metrics_and_their_trailing_mean(drawn, tmp_path):
    rows = _metrics_rows()  # 120 steps: past SMOOTH_FROM, a mean over 120 // 25 = 4 steps
    plots.plot_curves(rows, tmp_path / "curves.png", "run")
    assert _png(tmp_path / "curves.png").shape == (420, 1100, 4)
    (figure,) = drawn
    _assert_curves_match(figure, rows)
    assert figure.axes[0].get_yscale() == "log"  # the loss falls from ~2.3 to ~0.06
    assert figure.axes[1].get_yscale() == "linear"
    assert figure.get_suptitle() == "run"


def test_the_curves_check_catches_a_smoothing_window_off_by_one(drawn, tmp_path, monkeypatch):
    real_mean = plots._moving_mean
    monkeypatch.setattr(plots, "_moving_mean", lambda values, window: real_mean(values, window + 1))
    rows = _metrics_rows()
    plots.plot_curves(rows, tmp_path / "curves.png")
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        _assert_curves_match(drawn[0], rows)


def test_plot_curves_draws_few_steps_as_they_are(drawn, tmp_path):
    losses = [2.0, 1.5, math.inf, 1.0]  # inf, like NaN, is a gap
    rows = [{"kind": "step", "step": s + 1, "loss": v} for s, v in enumerate(losses)]
    plots.plot_curves(rows, tmp_path / "few.png")
    loss_ax, accuracy_ax = drawn[0].axes
    line = _line(loss_ax, "train (per step)")
    np.testing.assert_array_equal(line.get_xdata(), [1, 2, 3, 4])
    np.testing.assert_array_equal(line.get_ydata(), [2.0, 1.5, np.nan, 1.0])
    assert len(loss_ax.get_lines()) == 1 and loss_ax.get_yscale() == "linear"
    assert len(accuracy_ax.get_lines()[0].get_ydata()) == 0  # no accuracy key: an empty line


def test_plot_filters_draws_each_output_channel_of_the_chosen_input(drawn, tmp_path):
    kernel_HWIO = np.random.default_rng(2).normal(size=(3, 4, 2, 5))
    kernel_HWIO[0, 0, 1, 0] = -7.0  # the largest magnitude sets the shared symmetric scale
    plots.plot_filters(kernel_HWIO, tmp_path / "filters.png", in_channel=1)
    _png(tmp_path / "filters.png")
    (figure,) = drawn
    images = [image for ax in figure.axes for image in ax.images]
    assert len(images) == 5  # a 3x2 grid, the sixth cell empty
    for o, image in enumerate(images):
        np.testing.assert_array_equal(image.get_array(), kernel_HWIO[:, :, 1, o])
        assert image.get_clim() == (-7.0, 7.0)
    assert figure.get_suptitle() == "5 filters 3x4, input channel 1 of 2"


def test_plot_confusion_draws_row_fractions_counts_and_accuracies(drawn, tmp_path):
    cm_KK = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])
    plots.plot_confusion(cm_KK, ["a", "b", "c"], tmp_path / "cm.png")
    _png(tmp_path / "cm.png")
    ax = drawn[0].axes[0]
    expected_fraction = [[0.75, 0.25, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    np.testing.assert_allclose(ax.images[0].get_array(), expected_fraction)
    cells = {(text.get_position(), text.get_text()) for text in ax.texts}
    # every count but the off-diagonal zeros, the empty class's diagonal 0 included
    assert cells == {((0, 0), "3"), ((1, 0), "1"), ((1, 1), "2"), ((2, 2), "0")}
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a (75.0%)", "b (100.0%)", "c (n/a)"]
    assert ax.get_title() == "accuracy 83.33% on 6 examples"


def test_plot_sweep_line_draws_the_mean_band_and_every_seed(drawn, tmp_path):
    accuracy_by_x = {0.1: [0.90, 0.94], 0.01: [0.80, 0.86, 0.83], 1.0: [0.5]}
    sweep_plots.plot_sweep_line(accuracy_by_x, tmp_path / "line.png", "optim.learning_rate")
    _png(tmp_path / "line.png")
    ax = drawn[0].axes[0]
    mean = _line(ax, "mean over seeds")
    np.testing.assert_array_equal(mean.get_xdata(), [0.01, 0.1, 1.0])
    np.testing.assert_allclose(mean.get_ydata(), [83.0, 92.0, 50.0])
    dots = [line for line in ax.get_lines() if line.get_marker() == "."]
    seeds = np.concatenate([dot.get_ydata() for dot in dots])
    np.testing.assert_allclose(seeds, [80, 86, 83, 90, 94, 50])
    band = ax.collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == pytest.approx(50.0) and band[:, 1].max() == pytest.approx(94.0)
    assert ax.get_xscale() == "log" and ax.get_title() == "6 runs, 3 settings"


def test_plot_sweep_heatmap_draws_percentages_and_marks_missing_cells(drawn, tmp_path):
    grid_YX = np.array([[0.9, 0.8, np.nan], [0.7, 0.95, 0.6]])
    sweep_plots.plot_sweep_heatmap(
        grid_YX, [0.01, 0.1, 1.0], [0, 1], tmp_path / "h.png", "lr", "seed"
    )
    _png(tmp_path / "h.png")
    ax = drawn[0].axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), grid_YX * 100)
    assert [t.get_text() for t in ax.texts] == ["90.00", "80.00", "n/a", "70.00", "95.00", "60.00"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.01", "0.1", "1"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("lr", "seed")


def test_plot_histogram_counts_every_finite_value_and_marks_the_median(drawn, tmp_path):
    values_N = np.concatenate([np.geomspace(1e-3, 10.0, 99), [np.nan, np.inf]])
    plots.plot_histogram(values_N, tmp_path / "hist.png", "gradient norm", bins=20)
    _png(tmp_path / "hist.png")
    ax = drawn[0].axes[0]
    heights = [patch.get_height() for patch in ax.patches]
    assert len(heights) == 20 and sum(heights) == 99  # NaN and inf are left out
    assert _line(ax, "median").get_xdata()[0] == pytest.approx(np.median(values_N[:99]))
    assert ax.get_xscale() == "log"  # the values span 4 decades
    assert ax.get_title() == "99 examples" and ax.get_xlabel() == "gradient norm"
    plots.plot_histogram([1.0, 2.0, 3.0], tmp_path / "narrow.png", "x")
    assert drawn[1].axes[0].get_xscale() == "linear"


def test_plot_examples_draws_each_image_with_its_caption(drawn, tmp_path):
    images_NHWC = np.random.default_rng(3).integers(0, 256, (10, 6, 5, 2))
    captions = [f"label {n}" for n in range(10)]
    plots.plot_examples(images_NHWC, captions, tmp_path / "examples.png", "worst")
    assert _png(tmp_path / "examples.png").shape == (390, 1200, 4)  # 8 columns, 2 rows
    (figure,) = drawn
    shown = [ax for ax in figure.axes if ax.images]
    assert len(figure.axes) == 16 and len(shown) == 10
    for n, ax in enumerate(shown):
        np.testing.assert_array_equal(ax.images[0].get_array(), images_NHWC[n, :, :, 0])
        assert ax.get_title() == captions[n]
    assert figure.get_suptitle() == "worst"


def _legend_texts(ax):
    return [text.get_text() for text in ax.get_legend().get_texts()]


def test_plot_curves_says_which_loss_has_label_smoothing_and_why_it_sits_higher(drawn, tmp_path):
    rows = _metrics_rows()
    plots.plot_curves(rows, tmp_path / "curves.png", label_smoothing=0.1)
    loss_ax, accuracy_ax = drawn[0].axes
    assert _legend_texts(loss_ax) == [
        "train loss, label smoothing 0.1 (mean of 4 steps)",
        "train loss, label smoothing 0.1 (epoch)",
        "test loss, no smoothing (epoch)",
    ]
    assert "smoothed by 0.1" in loss_ax.get_title() and "sits lower" in loss_ax.get_title()
    assert _legend_texts(accuracy_ax) == [
        "train (mean of 4 steps)",
        "train (epoch)",
        "test (epoch)",
    ]
    assert accuracy_ax.get_title() == ""
    plots.plot_curves(rows, tmp_path / "plain.png", label_smoothing=0.0)
    assert not any("smoothing" in t for t in _legend_texts(drawn[1].axes[0]))
    assert drawn[1].axes[0].get_title() == ""
