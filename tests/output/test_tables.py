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
