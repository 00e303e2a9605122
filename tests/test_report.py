"""Tables, metrics files, confusion matrices, plots and progress bars (cnnjax.report, .plots)."""

import json
import math
import subprocess
import sys

import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

from cnnjax import plots, progress, report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------- tables


def test_format_table_pads_and_right_aligns():
    table = report.format_table(("a", "bb"), [("xxx", "1"), ("y", "22")], right=(1,))
    assert table == "a    bb\nxxx   1\ny    22"


def test_summary_table_of_a_dict_right_aligns_numbers_and_converts_scalars():
    table = report.summary_table(
        {"test_accuracy": jnp.float32(0.75), "steps": np.int64(1500), "time_s": 12.5}
    )
    assert table.splitlines() == [
        "metric         value",
        "test_accuracy   0.75",
        "steps           1500",
        "time_s          12.5",
    ]


def test_summary_table_of_rows_takes_the_union_of_keys():
    table = report.summary_table([{"run": "a", "loss": 0.123456789}, {"run": "b", "acc": 1}])
    assert table.splitlines() == ["run      loss  acc", "a    0.123457", "b                1"]


# --------------------------------------------------------------------------- metrics files


def test_metrics_round_trip_numpy_and_jax_scalars_and_nonfinite(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with report.MetricsWriter(path) as writer:
        writer.write(
            kind="step",
            step=jnp.int32(3),
            loss=jnp.float32(0.5),
            accuracy=np.float64(0.25),
            lr=jnp.bfloat16(0.125),
            count=np.int64(7),
            ok=np.bool_(True),
            bad=float("nan"),
            up=np.float32("inf"),
            down=-math.inf,
            hist=jnp.arange(3),
            note="warm-up",
        )
        writer.write({"step": 3, "test_accuracy": 0.9, "kind": "epoch"})
    (line, _) = path.read_text().splitlines()

    def no_bare_constants(name):
        raise AssertionError(f"bare {name} is not JSON")

    raw = json.loads(line, parse_constant=no_bare_constants)  # strict JSON, no bare NaN
    assert (raw["bad"], raw["up"], raw["down"]) == ("NaN", "Infinity", "-Infinity")
    step_row, epoch_row = report.read_metrics(path)
    assert step_row["kind"] == "step" and step_row["step"] == 3 and type(step_row["step"]) is int
    assert (step_row["loss"], step_row["accuracy"], step_row["lr"]) == (0.5, 0.25, 0.125)
    assert type(step_row["loss"]) is float and type(step_row["count"]) is int
    assert step_row["ok"] is True and step_row["note"] == "warm-up"
    assert math.isnan(step_row["bad"]) and step_row["up"] == math.inf
    assert step_row["down"] == -math.inf and step_row["hist"] == [0, 1, 2]
    assert epoch_row == {"kind": "epoch", "step": 3, "test_accuracy": 0.9}
    assert report.read_metrics(path, kind="epoch") == [epoch_row]


def test_a_row_needs_a_kind_and_an_integer_step(tmp_path):
    with report.MetricsWriter(tmp_path / "m.jsonl") as writer:
        with pytest.raises(TypeError, match="step"):
            writer.write(kind="step", step=1.5, loss=0.1)
        with pytest.raises(ValueError, match="kind"):
            writer.write(step=1, loss=0.1)
        assert writer.write({"kind": "step", "step": 1, "loss": 1.0}, loss=0.5)["loss"] == 0.5


def test_each_line_is_readable_while_the_writer_is_open(tmp_path):
    path = tmp_path / "m.jsonl"
    writer = report.MetricsWriter(path)
    for step in range(1, 4):
        writer.write(kind="step", step=step, loss=1.0 / step)
        assert [row["step"] for row in report.read_metrics(path)] == list(range(1, step + 1))
    writer.close()


def test_a_killed_process_keeps_every_line_written(tmp_path):
    path = tmp_path / "m.jsonl"
    script = (
        "import os, signal, sys; from cnnjax import report\n"
        "w = report.MetricsWriter(sys.argv[1])\n"
        "for s in range(5): w.write(kind='step', step=s, loss=0.5)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(path)], check=False)
    assert result.returncode == -9
    assert [row["step"] for row in report.read_metrics(path)] == [0, 1, 2, 3, 4]


def test_opening_appends_and_never_overwrites(tmp_path):
    path = tmp_path / "m.jsonl"
    with report.MetricsWriter(path) as writer:
        writer.write(kind="step", step=1, loss=1.0)
    with report.MetricsWriter(path) as writer:
        writer.write(kind="step", step=2, loss=0.5)
    assert [row["step"] for row in report.read_metrics(path)] == [1, 2]


def _log_run(path, first_step, last_step, steps_per_epoch=4):
    with report.MetricsWriter(path) as writer:
        for step in range(first_step, last_step + 1):
            epoch = (step - 1) // steps_per_epoch + 1
            writer.write(dict(kind="step", step=step, epoch=epoch, loss=1.0 / step))
            if step % steps_per_epoch == 0:
                writer.write(dict(kind="epoch", step=step, epoch=epoch, test_accuracy=0.9))


def test_a_resumed_run_writes_the_same_file_as_an_uninterrupted_one(tmp_path):
    whole, resumed = tmp_path / "whole.jsonl", tmp_path / "resumed.jsonl"
    _log_run(whole, 1, 12)
    _log_run(resumed, 1, 10)  # checkpoint at step 8 (end of epoch 2), killed at step 10 ...
    with open(resumed, "a") as f:
        f.write('{"kind": "step", "st')  # ... in the middle of a write
    with pytest.raises(ValueError, match="partial line"):
        report.MetricsWriter(resumed)
    assert len(report.read_metrics(resumed)) == 12  # the partial line is not a row
    assert report.truncate_after(resumed, 8) == 2  # steps 9 and 10
    _log_run(resumed, 9, 12)
    assert resumed.read_bytes() == whole.read_bytes()
    assert report.truncate_after(resumed, 12) == 0
    assert report.truncate_after(tmp_path / "missing.jsonl", 3) == 0


def test_a_malformed_line_in_the_middle_raises(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"kind": "step", "step": 1}\nnot json\n{"kind": "step", "step": 2}\n')
    with pytest.raises(ValueError, match=":2:"):
        report.read_metrics(path)


# ------------------------------------------------------------------------ classification


def test_confusion_matrix_worked_by_hand():
    labels_N = np.array([0, 1, 2, 2, 2, 0])
    predictions_N = jnp.array([0, 1, 1, 2, 2, 2])
    cm_KK = report.confusion_matrix(predictions_N, labels_N, num_classes=4)
    # rows are true classes: class 0 -> {0, 2}; class 1 -> {1}; class 2 -> {1, 2, 2}; 3 unseen
    expected = [[1, 0, 1, 0], [0, 1, 0, 0], [0, 1, 2, 0], [0, 0, 0, 0]]
    np.testing.assert_array_equal(cm_KK, expected)
    assert cm_KK.dtype == np.int64
    accuracy_K = report.per_class_accuracy(cm_KK)
    np.testing.assert_allclose(accuracy_K[:3], [1 / 2, 1.0, 2 / 3])
    assert np.isnan(accuracy_K[3])


@pytest.mark.parametrize("bad", [[0, 3], [-1, 0]])
def test_confusion_matrix_rejects_classes_out_of_range(bad):
    with pytest.raises(ValueError, match="predictions"):
        report.confusion_matrix(np.array(bad), np.array([0, 1]), num_classes=3)


# ----------------------------------------------------------------------------------- plots


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
    cm_KK = report.confusion_matrix(rng.integers(0, 3, 50), rng.integers(0, 3, 50), 3)
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


# -------------------------------------------------------------------------- progress bars


class _Unconvertible:
    def __float__(self):
        raise AssertionError("a disabled bar converted a value")


@pytest.mark.parametrize("enabled", [False, None], ids=["disabled", "not-a-tty"])
def test_progress_is_silent_when_off(enabled, capsys):
    bar = progress.progress(range(5), "epoch 1", enabled=enabled)
    seen = []
    for item in bar:
        seen.append(item)
        bar.set_metrics(loss=_Unconvertible())
    bar.close()
    assert seen == [0, 1, 2, 3, 4]
    assert capsys.readouterr() == ("", "")


def test_progress_shows_metrics_when_on(capsys):
    bar = progress.progress(3, "epoch 2", enabled=True)
    for _ in range(3):
        bar.update(1)
        bar.set_metrics(loss=jnp.float32(0.41), accuracy=np.float64(0.8625))
    bar.close()
    err = capsys.readouterr().err
    assert "epoch 2" in err and "3/3" in err and "loss=0.4100, accuracy=0.8625" in err
