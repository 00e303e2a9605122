"""Plain-text tables, and the classification tables a run reports (confusion matrix, accuracy
per class). Legend: N examples, K classes; `cm_KK[true, predicted]`.

numpy only: the math core (`models`) imports this module for its parameter table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from cnnjax.output.jsonl import plain

# ------------------------------------------------------------------------------------ tables


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], right=()) -> str:
    """Columns padded to their widest cell; columns whose index is in `right` align right."""
    lines = [tuple(header), *(tuple(str(c) for c in row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

    def cell(i, text):
        return text.rjust(widths[i]) if i in right else text.ljust(widths[i])

    return "\n".join("  ".join(cell(i, c) for i, c in enumerate(line)).rstrip() for line in lines)


def _format_value(value) -> str:
    value = plain(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


def summary_table(rows: Mapping | Sequence[Mapping]) -> str:
    """A final run summary as text.

    Args:
      rows: a dict `{name: value}` (printed as two columns, name and value), or a list of dicts
        (one line each; the columns are the keys in order of first appearance, a missing key is
        an empty cell). Values may be numpy/jax scalars; floats are shown with 6 significant
        digits; numeric columns align right.
    Returns:
      The table from `format_table`.
    """
    if isinstance(rows, Mapping):
        rows = [{"metric": str(name), "value": value} for name, value in rows.items()]
    header = list(dict.fromkeys(key for row in rows for key in row))
    body = [[_format_value(row.get(key)) for key in header] for row in rows]
    right = tuple(
        i
        for i, key in enumerate(header)
        if all(isinstance(plain(row.get(key)), int | float | None) for row in rows)
    )
    return format_table(header, body, right=right)


# ---------------------------------------------------------------------------- classification


def confusion_matrix(predictions_N, labels_N, num_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class) pairs.

    Args:
      predictions_N: predicted class indices, ints in [0, num_classes).
      labels_N: true class indices, ints in [0, num_classes).
      num_classes: K.
    Returns:
      cm_KK, int64: cm_KK[t, p] = number of examples of true class t predicted as p (rows are
      true classes, columns predictions), so cm_KK.sum() == N.
    """
    predictions_N = np.asarray(predictions_N).reshape(-1)
    labels_N = np.asarray(labels_N).reshape(-1)
    if predictions_N.shape != labels_N.shape:
        raise ValueError(f"{predictions_N.shape[0]} predictions but {labels_N.shape[0]} labels")
    for name, values in (("predictions", predictions_N), ("labels", labels_N)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes}), got {values.min()}..")
    flat = labels_N.astype(np.int64) * num_classes + predictions_N.astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, -1)


def format_confusion(cm_KK, names: Sequence[str]) -> str:
    """cm_KK as a table: a row per true class, starting with its name (and index, unless the name
    is the index), a column per predicted class by index, and the row's total (that class's
    examples)."""
    cm_KK = np.asarray(cm_KK)
    if len(names) != len(cm_KK):
        raise ValueError(f"{len(cm_KK)} classes but {len(names)} class names")
    labels = [name if name == str(k) else f"{name} ({k})" for k, name in enumerate(names)]
    header = ("true \\ predicted", *map(str, range(len(names))), "total")
    rows = [(label, *row, sum(row)) for label, row in zip(labels, cm_KK.tolist(), strict=True)]
    return format_table(header, rows, right=range(1, len(names) + 2))


def per_class_accuracy(cm_KK) -> np.ndarray:
    """Recall of each true class: cm_KK[k, k] / cm_KK[k].sum(); NaN for a class with no examples.

    Returns:
      float64 array of shape (K,).
    """
    cm_KK = np.asarray(cm_KK, dtype=np.float64)
    totals_K = cm_KK.sum(axis=1)
    correct_K = np.diagonal(cm_KK)
    safe_K = np.where(totals_K > 0, totals_K, 1.0)  # avoid 0/0 warnings; NaN set below
    return np.where(totals_K > 0, correct_K / safe_K, np.nan)
