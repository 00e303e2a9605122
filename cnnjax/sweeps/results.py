"""Sweep results: the results file, per-setting mean +- std over seeds, the best setting, the
table and plots.

A results row is one member's outcome (see cnnjax.sweeps.sweep): its "member" index, "overrides"
({field: value}, the seed included), "test_accuracy", "test_loss" and "diverged_at" (None, or
the step whose update or evaluation was not finite). A setting is the overrides without the seed.

A results file (results.jsonl) holds one row per member and is only ever replaced whole
(`write_rows`), so a killed sweep leaves the previous file or the next, never a duplicate or a
half-written row; `by_member` reads files an older version may have left with repeated rows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from cnnjax import faults
from cnnjax.output import jsonl, tables

# ------------------------------------------------------------------------------ the results file


def read_rows(path: Path) -> list[dict]:
    """The member rows of a results file in file order ([] if there is none yet)."""
    return jsonl.read_metrics(path, "member") if Path(path).exists() else []


def write_rows(path: Path, rows: list[dict]) -> None:
    """Replace the results file at `path` by `rows`, atomically: a kill at any moment leaves
    either the old file or the new one (the rows go to a temporary file renamed over it)."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)  # a killed write's leftover
    with jsonl.MetricsWriter(partial) as writer:
        for row in rows:
            writer.write(row)
            faults.point("results.row")
    os.replace(partial, path)


def by_member(rows: list[dict]) -> tuple[dict[int, dict], list[int]]:
    """(member -> its row, members with rows that disagree). Identical repeats of a row count
    once; a member whose rows disagree is left out of the dict and listed instead."""
    seen: dict[int, dict] = {}
    conflicts: list[int] = []
    for row in rows:
        m = row["member"]
        if m in seen and _key(seen[m]) != _key(row) and m not in conflicts:
            conflicts.append(m)
        seen.setdefault(m, row)
    return {m: r for m, r in seen.items() if m not in conflicts}, sorted(conflicts)


def _key(row: dict) -> str:
    return json.dumps(row, sort_keys=True)  # NaN != NaN as floats, but "NaN" == "NaN" here


# ----------------------------------------------------------------------------- the settings


def _setting(overrides: dict) -> tuple:
    return tuple((k, v) for k, v in overrides.items() if k != "seed")


def settings_summary(results: list[dict]) -> list[dict]:
    """One dict per setting (the overrides but the seed), in sweep order: its members, how many
    diverged, and mean / std (ddof 1; 0 for one member) of test accuracy and loss over the
    members that did not diverge. `results` holds one row per member (by_member)."""
    members = [r["member"] for r in results]
    if len(set(members)) != len(members):
        raise ValueError(f"results list a member twice: {sorted(members)}")
    by_setting: dict[tuple, list[dict]] = {}
    for row in sorted(results, key=lambda r: r["member"]):
        by_setting.setdefault(_setting(row["overrides"]), []).append(row)
    summary = []
    for setting, rows in by_setting.items():
        healthy = [r for r in rows if r["diverged_at"] is None]
        stats = {}
        for name in ("test_accuracy", "test_loss"):
            values = np.array([r[name] for r in healthy], np.float64)
            stats[name] = (
                float(values.mean()) if len(values) else float("nan"),
                float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            )
        summary.append(
            dict(
                setting=dict(setting), members=len(rows), diverged=len(rows) - len(healthy), **stats
            )
        )
    return summary


def best_setting(summary: list[dict]) -> int | None:
    """Index of the setting with the highest mean test accuracy (None if all diverged)."""
    scores = [s["test_accuracy"][0] for s in summary]
    finite = [i for i, v in enumerate(scores) if np.isfinite(v)]
    return max(finite, key=lambda i: scores[i]) if finite else None


def settings_table(summary: list[dict]) -> str:
    """The summary as text: a row per setting, the best marked with *."""
    fields = list(summary[0]["setting"]) if summary else []
    best = best_setting(summary)
    rows = []
    for i, s in enumerate(summary):
        acc, loss = s["test_accuracy"], s["test_loss"]
        rows.append(
            [
                *(
                    f"{s['setting'][f]:g}"
                    if isinstance(s["setting"][f], float)
                    else str(s["setting"][f])
                    for f in fields
                ),
                f"{s['members'] - s['diverged']}/{s['members']}",
                f"{100 * acc[0]:.2f} ± {100 * acc[1]:.2f}",
                f"{loss[0]:.4f} ± {loss[1]:.4f}",
                "*" if i == best else "",
            ]
        )
    header = [*fields, "runs ok", "test accuracy %", "test loss", "best"]
    return tables.format_table(header, rows, right=range(len(fields), len(fields) + 3))


def write_report(directory: Path, results: list[dict], search: str | None = None) -> str:
    """table.txt (settings_table) and, for one swept number, accuracy_vs_<field>.png (mean and
    min-max band over seeds), or for two, accuracy_heatmap.png; for a search (`search` names
    its sampler), search_progress.png instead of the heatmap. Returns the table."""
    from cnnjax.output import sweep_plots  # matplotlib only where a report is drawn

    summary = settings_summary(results)
    table = settings_table(summary)
    Path(directory).mkdir(parents=True, exist_ok=True)
    (Path(directory) / "table.txt").write_text(table + "\n")
    fields = list(summary[0]["setting"]) if summary else []
    if search is not None:
        ordered = sorted(results, key=lambda r: r["member"])
        accuracy = [r["test_accuracy"] if r["diverged_at"] is None else np.nan for r in ordered]
        title = f"{search} search: {len(ordered)} members"
        sweep_plots.plot_search_progress(accuracy, Path(directory) / "search_progress.png", title)
    numeric = all(isinstance(s["setting"][f], (int, float)) for s in summary for f in fields)
    if len(fields) == 1 and numeric:
        by_x: dict[float, list[float]] = {}
        for row in results:
            if row["diverged_at"] is None:
                by_x.setdefault(row["overrides"][fields[0]], []).append(row["test_accuracy"])
        name = fields[0].split(".")[-1]
        sweep_plots.plot_sweep_line(by_x, Path(directory) / f"accuracy_vs_{name}.png", fields[0])
    elif len(fields) == 2 and search is None:
        xs = list(dict.fromkeys(s["setting"][fields[0]] for s in summary))
        ys = list(dict.fromkeys(s["setting"][fields[1]] for s in summary))
        grid = np.full((len(ys), len(xs)), np.nan)
        for s in summary:
            grid[ys.index(s["setting"][fields[1]]), xs.index(s["setting"][fields[0]])] = s[
                "test_accuracy"
            ][0]
        sweep_plots.plot_sweep_heatmap(
            grid, xs, ys, Path(directory) / "accuracy_heatmap.png", *fields
        )
    return table
