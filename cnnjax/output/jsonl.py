"""The metrics file format: JSON lines, one object per line, written so a crash loses no row.

A metrics file holds one JSON object per line, each with a `"kind"` (e.g. `"step"`, `"epoch"`)
and an integer `"step"`, the rest free-form. Numpy and jax scalars are written as Python
numbers; NaN and +-inf are written as the strings `"NaN"`, `"Infinity"`, `"-Infinity"` (plain
JSON has no such numbers) and `read_metrics` turns those strings back into floats.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping

import numpy as np

# ------------------------------------------------------------------------------ metrics files

_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def plain(value):
    """Python value JSON can write: numpy/jax scalars to int/float/bool, arrays to lists."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    array = np.asarray(value)  # numpy and jax scalars and arrays alike
    if array.ndim > 0:
        return [plain(item) for item in array]
    if array.dtype.kind == "b":
        return bool(array)
    if array.dtype.kind in "iu":
        return int(array)
    return float(array)  # float16/bfloat16/float32/float64 all read back as Python floats


def _map_leaves(fn, value):
    if isinstance(value, dict):
        return {key: _map_leaves(fn, item) for key, item in value.items()}
    if isinstance(value, list):
        return [_map_leaves(fn, item) for item in value]
    return fn(value)


def _encode_nonfinite(leaf):
    if isinstance(leaf, float) and not math.isfinite(leaf):
        return "NaN" if math.isnan(leaf) else ("Infinity" if leaf > 0 else "-Infinity")
    return leaf


def _decode_nonfinite(leaf):
    return _NONFINITE.get(leaf, leaf) if isinstance(leaf, str) else leaf


def _ends_in_partial_line(path) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return False
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


class MetricsWriter:
    """Appends one JSON line per `write`, flushed at once (a killed run keeps every full line).

    Opening appends to an existing file, never truncates it. To resume a run, first call
    `truncate_after(path, checkpoint_step)` and then open the writer: the file then equals the
    one an uninterrupted run writes. A file whose last line was cut by a kill is refused until
    `truncate_after` has dropped that line. Only one process should write a given file.
    """

    def __init__(self, path, events=None):
        """`events`: also hand each row, as written, to events.write (and close it with this
        writer): cnnjax.output.events mirrors the rows to TensorBoard."""
        self.path, self._events = os.fspath(path), events
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        if os.path.exists(self.path) and _ends_in_partial_line(self.path):
            raise ValueError(
                f"{self.path} ends in a partial line (a killed write); "
                "call truncate_after(path, step) before appending"
            )
        self._file = open(self.path, "a", encoding="utf-8")  # closed by close() / the with-block

    def write(self, row: Mapping | None = None, /, **values) -> dict:
        """Appends one row as a JSON line and flushes it; returns the row as written.

        Args:
          row, **values: the row, as a dict, as keywords, or both (keywords win), e.g.
            `write({"kind": "step", "step": 3, "loss": loss})` or `write(kind="epoch", step=3,
            test_accuracy=acc)`. "kind" (e.g. "step", "epoch") and "step" (the global optimizer
            step, an integer scalar) are required. Values: numbers (Python, numpy or jax
            scalars), strings, bools, None, or small arrays and lists (written as lists).
        """
        row = plain({**(row or {}), **values})
        if not isinstance(row.get("kind"), str):
            raise ValueError(f"a metrics row needs a string 'kind', got {row.get('kind')!r}")
        if isinstance(row.get("step"), bool) or not isinstance(row.get("step"), int):
            raise TypeError(f"a metrics row needs an integer 'step', got {row.get('step')!r}")
        row = {"kind": row.pop("kind"), "step": row.pop("step"), **row}  # same key order always
        line = json.dumps(_map_leaves(_encode_nonfinite, row), allow_nan=False)
        self._file.write(line + "\n")
        self._file.flush()  # survives a killed process; os.fsync would also survive power loss
        if self._events is not None:
            self._events.write(row)
        return row

    def close(self) -> None:
        self._file.close()
        if self._events is not None:
            self._events.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _read_lines(path) -> list[str]:
    """The file's complete lines; a last line without its newline (a killed write) is dropped."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    lines = text.split("\n")
    return lines[:-1]  # the piece after the last "\n": "" for a whole file, else a partial line


def read_metrics(path, kind: str | None = None) -> list[dict]:
    """Rows of a metrics file in the order written, optionally only those of one `kind`.

    Args:
      path: the JSON-lines file written by `MetricsWriter`.
      kind: keep only rows whose "kind" equals this (None: all rows).
    Returns:
      A list of dicts; "NaN"/"Infinity"/"-Infinity" strings are read back as floats. A final
      line cut short by a kill is ignored; any other malformed line raises ValueError.
    """
    rows = []
    for number, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            row = _map_leaves(_decode_nonfinite, json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not a JSON line: {line[:80]!r}") from err
        if kind is None or row.get("kind") == kind:
            rows.append(row)
    return rows


def truncate_after(path, step: int) -> int:
    """Drops every row logged after `step` (rows with "step" > step) and any partial last line.

    Call it when resuming from the checkpoint taken at `step`, before opening a MetricsWriter,
    so that the resumed run's file equals an uninterrupted run's. The training loop should save
    its checkpoint after writing all rows of that step. The file is replaced atomically; a
    missing file is left missing.

    Returns:
      The number of complete rows dropped.
    """
    if not os.path.exists(path):
        return 0
    lines = [line for line in _read_lines(path) if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] <= step]
    if len(kept) == len(lines) and not _ends_in_partial_line(path):
        return 0
    directory = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("w", dir=directory, delete=False, encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in kept))
    os.chmod(f.name, os.stat(path).st_mode)  # a temporary file is private (0600) by default
    os.replace(f.name, path)
    return len(lines) - len(kept)


def write_json(path, value) -> None:
    """Write `value` as one line of JSON at `path`, whole or not at all: a temporary file,
    flushed to disk, renamed over it (a kill leaves the old file or the new one)."""
    path = os.fspath(path)
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(json.dumps(value) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
