"""The gradient checks' report: a Row per check, the table, the summary and the progress line."""

from __future__ import annotations

import itertools
from typing import NamedTuple

from cnnjax.output import tables


class Row(NamedTuple):
    check: str  # "layer/param vs reference"
    case: str  # the shapes and settings checked
    dtype: str
    max_abs_err: float
    max_rel_err: float  # max|a - b| / max|b|
    tolerance: float  # on max_rel_err
    passed: bool


def case_text(case) -> str:
    """A case as the rows show it: a dict as key=value pairs, anything else as its str."""
    if isinstance(case, dict):
        return " ".join(f"{k}={v}".replace(" ", "") for k, v in case.items())
    return str(case)


def raise_failures(rows: list[Row]) -> list[Row]:
    """An AssertionError whose message is the failing rows' table and the summary; else rows."""
    if failed := [row for row in rows if not row.passed]:
        raise AssertionError(f"\n{format_table(failed)}\n{summary(rows)}")
    return rows


def aggregate(rows: list[Row]) -> list[Row]:
    """One row per (check, dtype): the worst errors over its cases; passed if all passed."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.check, row.dtype), []).append(row)
    return [
        Row(
            check,
            f"{len(g)} cases",
            dtype,
            max(r.max_abs_err for r in g),
            max(r.max_rel_err for r in g),
            max(r.tolerance for r in g),
            all(r.passed for r in g),
        )
        for (check, dtype), g in groups.items()
    ]


def format_table(rows: list[Row]) -> str:
    """Columns: check, case, dtype, max abs err, max rel err, tolerance, pass/FAIL."""
    header = ("check", "case", "dtype", "max abs err", "max rel err", "tolerance", "result")
    body = [
        (
            r.check,
            r.case,
            r.dtype,
            f"{r.max_abs_err:.2e}",
            f"{r.max_rel_err:.2e}",
            f"{r.tolerance:.0e}",
            "pass" if r.passed else "FAIL",
        )
        for r in rows
    ]
    return tables.format_table(header, body, right=(3, 4, 5))


def progress_line(group: str, rows: list[Row]) -> str:
    """One line for a group of checks as `groups` yields it: its dtype, number of checks, the
    worst relative error (its check and tolerance), and pass, or FAIL and the failed checks."""
    worst, failed = max(rows, key=lambda r: r.max_rel_err), [r for r in rows if not r.passed]
    result = f"FAIL: {', '.join(dict.fromkeys(r.check for r in failed))}" if failed else "pass"
    return (
        f"{worst.dtype}  {group}: {len(rows)} checks, worst {worst.max_rel_err:.1e} "
        f"(tol {worst.tolerance:.0e}, {worst.check}), {result}"
    )


def summary(rows: list[Row]) -> str:
    """N checks, N failed, and per dtype and reference the worst relative error."""
    parts = [f"{len(rows)} checks, {sum(not r.passed for r in rows)} failed"]
    for dtype, ref in itertools.product(sorted({r.dtype for r in rows}), ("autodiff", "fd")):
        group = [r for r in rows if r.dtype == dtype and f"vs {ref}" in r.check]
        if group:
            worst = max(group, key=lambda r: r.max_rel_err)
            parts.append(
                f"{dtype} vs {ref}: worst {worst.max_rel_err:.1e} "
                f"(tol {worst.tolerance:.0e}, {worst.check})"
            )
    return "; ".join(parts)
