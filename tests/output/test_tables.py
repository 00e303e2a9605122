"""cnnjax.output.tables: text tables and the confusion matrix, by hand."""

import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax.output import tables


def test_format_table_pads_and_right_aligns():
    table = tables.format_table(("a", "bb"), [("xxx", "1"), ("y", "22")], right=(1,))
    assert table == "a    bb\nxxx   1\ny    22"


def test_summary_table_of_a_dict_right_aligns_numbers_and_converts_scalars():
    table = tables.summary_table(
        {"test_accuracy": jnp.float32(0.75), "steps": np.int64(1500), "time_s": 12.5}
    )
    assert table.splitlines() == [
        "metric         value",
        "test_accuracy   0.75",
        "steps           1500",
        "time_s          12.5",
    ]


def test_summary_table_of_rows_takes_the_union_of_keys():
    table = tables.summary_table([{"run": "a", "loss": 0.123456789}, {"run": "b", "acc": 1}])
    assert table.splitlines() == ["run      loss  acc", "a    0.123457", "b                1"]


# ------------------------------------------------------------------------ classification


def test_confusion_matrix_worked_by_hand():
    labels_N = np.array([0, 1, 2, 2, 2, 0])
    predictions_N = jnp.array([0, 1, 1, 2, 2, 2])
    cm_KK = tables.confusion_matrix(predictions_N, labels_N, num_classes=4)
    # rows are true classes: class 0 -> {0, 2}; class 1 -> {1}; class 2 -> {1, 2, 2}; 3 unseen
    expected = [[1, 0, 1, 0], [0, 1, 0, 0], [0, 1, 2, 0], [0, 0, 0, 0]]
    np.testing.assert_array_equal(cm_KK, expected)
    assert cm_KK.dtype == np.int64
    accuracy_K = tables.per_class_accuracy(cm_KK)
    np.testing.assert_allclose(accuracy_K[:3], [1 / 2, 1.0, 2 / 3])
    assert np.isnan(accuracy_K[3])


@pytest.mark.parametrize("bad", [[0, 3], [-1, 0]])
def test_confusion_matrix_rejects_classes_out_of_range(bad):
    with pytest.raises(ValueError, match="predictions"):
        tables.confusion_matrix(np.array(bad), np.array([0, 1]), num_classes=3)


FASHION = ("T-shirt/top", "Trouser", "Pullover")


def _confusion_rows(text, names):
    """(label, counts, total) per row of a format_confusion table, its header checked."""
    header, *lines = text.splitlines()
    assert header.split() == ["true", "\\", "predicted", *map(str, range(len(names))), "total"]
    assert len(lines) == len(names)
    rows = []
    for line in lines:
        label, numbers = line[: header.index("0") - 1].strip(), line[header.index("0") - 1 :]
        *counts, total = map(int, numbers.split())
        rows.append((label, counts, total))
    return rows


def test_format_confusion_labels_each_true_class_and_totals_its_examples():
    rng = np.random.default_rng(3)
    labels, predictions = rng.integers(0, 3, 40), rng.integers(0, 3, 40)
    cm = tables.confusion_matrix(predictions, labels, 3)
    rows = _confusion_rows(tables.format_confusion(cm, FASHION), FASHION)
    for k, (label, counts, total) in enumerate(rows):
        assert label == f"{FASHION[k]} ({k})"
        assert counts == [int(np.sum((labels == k) & (predictions == p))) for p in range(3)]
        assert total == int(np.sum(labels == k)) == sum(counts)
    digits = tables.format_confusion(cm, ("0", "1", "2"))
    assert [label for label, _, _ in _confusion_rows(digits, "012")] == ["0", "1", "2"]
    with pytest.raises(ValueError, match="3 classes but 2 class names"):
        tables.format_confusion(cm, FASHION[:2])


def test_a_finished_run_reports_named_rows_and_curves_that_name_the_smoothing(
    dataset, tmp_path, monkeypatch
):
    """A real run (1 epoch, label smoothing 0.25): evaluate's confusion rows start with their
    class names and total the test split's examples of each class; curves.png's legend names
    the smoothing (run.finish passes it on)."""
    from cnnjax.output import plots  # a real run (TFDS, orbax) only for this test
    from cnnjax.training import analysis, data, run
    from tests.builders import config_for

    figures, real_save = [], plots.save
    monkeypatch.setattr(
        plots, "save", lambda figure, path: (figures.append(figure), real_save(figure, path))
    )
    run.fit(config_for(dataset, epochs=1, label_smoothing=0.25), tmp_path / "run")
    (curves,) = [f for f in figures if f.axes[0].get_ylabel() == "loss"]
    legend = [t.get_text() for t in curves.axes[0].get_legend().get_texts()]
    assert "train loss, label smoothing 0.25 (epoch)" in legend
    report = analysis.evaluation_report(tmp_path / "run")
    table = report.split("confusion matrix (rows: true class, columns: predicted class)\n")[1]
    _, test_labels = data.load("mnist", "test", source_dir=dataset[0], data_dir=dataset[1])
    names = [str(k) for k in range(10)]
    rows = _confusion_rows(table, names)
    assert [label for label, _, _ in rows] == names
    for k, (_, counts, total) in enumerate(rows):
        assert sum(counts) == total == int(np.sum(np.asarray(test_labels) == k))
