"""Sweeps compared at one compute budget: each sweep config run once per seed (config.seed and
a search's seed both set to it), each sweep's anytime curve, and the table and plot over seeds.

A sweep's anytime curve (`anytime`) follows its populations in the order they trained: after
each population-epoch (its members' epochs counted as member-epochs spent), the model a
researcher would take so far is the member-epoch with the best objective (validation accuracy
where a split is held out, cnnjax.sweeps.search.objective), and the curve records that model's
test accuracy. A member stopped by halving counts with the epochs it trained; a PBT member's
models count at every epoch. The budget is the member-epochs, not seconds, so that the curves
do not depend on the machine's load.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np

from cnnjax.output import jsonl, tables
from cnnjax.sweeps import records, search, sweep


def load(path: str):
    """(get_config(), get_sweep()) of the sweep config file at `path`."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(), module.get_sweep()


def seeded(config, found, seed: int):
    """The sweep for one comparison seed: config.seed and a search's seed set to `seed`."""
    config = config.copy_and_resolve_references()
    config.seed = seed
    return config, dataclasses.replace(found, seed=seed) if search.is_search(found) else found


def run(paths: dict[str, str], seeds: list[int], workdir) -> dict[str, list[dict]]:
    """Every sweep config in `paths` (name -> file) for every seed, in workdir/<name>/seed-<s>
    (a finished one is read back; a killed one resumes), -> name -> one anytime curve per
    seed."""
    curves: dict[str, list[dict]] = {}
    for name, path in paths.items():
        base = load(path)
        for seed in seeds:
            directory = Path(workdir) / name / f"seed-{seed}"
            config, found = seeded(*base, seed)
            resume = (directory / "sweep.json").exists()
            sweep.fit(config, found, directory, resume=resume)
            curves.setdefault(name, []).append(anytime(directory))
    return curves


def anytime(directory) -> dict:
    """{"spent": member-epochs after each population-epoch, "test_accuracy": the test accuracy
    of the best model by the objective so far, "objective": that model's objective, "seconds":
    the training seconds so far}, each a list (see the module docstring)."""
    directory = Path(directory)
    planned = records.read_plan(directory)
    curve = {"spent": [], "test_accuracy": [], "objective": [], "seconds": []}
    best, spent, seconds, p = (-np.inf, np.nan), 0, 0.0, 0
    for populations in planned:
        for members in populations:
            rows = jsonl.read_metrics(directory / "populations" / str(p) / "metrics.jsonl", "epoch")
            for epoch in sorted({r["epoch"] for r in rows}):
                now = [r for r in rows if r["epoch"] == epoch]
                spent += len(members)
                seconds += now[0]["seconds"]
                for r in now:
                    score = search.objective(r)
                    if r["diverged_at"] is None and np.isfinite(score) and score > best[0]:
                        best = (score, r["test_accuracy"])
                for key, value in zip(curve, (spent, best[1], best[0], seconds), strict=True):
                    curve[key].append(float(value))
            p += 1
    return curve


def at(curve: dict, spent: int) -> float:
    """The curve's test accuracy once `spent` member-epochs are spent (NaN before its first)."""
    i = np.searchsorted(curve["spent"], spent, side="right") - 1
    return curve["test_accuracy"][i] if i >= 0 else float("nan")


def reached(curve: dict, accuracy: float) -> float:
    """The member-epochs a curve needed to reach `accuracy` (inf: it never did)."""
    hits = [s for s, a in zip(curve["spent"], curve["test_accuracy"], strict=True) if a >= accuracy]
    return hits[0] if hits else float("inf")


def summarize(curves: dict[str, list[dict]], reference: str) -> list[dict]:
    """A row per sweep: its final test accuracy (the best model's by the objective), mean and
    std (ddof 1) over seeds, at half the budget too; member-epochs and seconds spent; and per
    seed the member-epochs it took to reach `reference`'s mean final accuracy."""
    target = float(np.mean([c["test_accuracy"][-1] for c in curves[reference]]))
    budget = max(c["spent"][-1] for cs in curves.values() for c in cs)
    rows = []
    for name, cs in curves.items():
        final = np.array([c["test_accuracy"][-1] for c in cs])
        half = np.array([at(c, budget // 2) for c in cs])
        rows.append(
            dict(
                sweep=name,
                seeds=len(cs),
                final=(float(final.mean()), float(final.std(ddof=1)) if len(cs) > 1 else 0.0),
                half=(float(half.mean()), float(half.std(ddof=1)) if len(cs) > 1 else 0.0),
                member_epochs=[c["spent"][-1] for c in cs],
                seconds=[c["seconds"][-1] for c in cs],
                to_reference=[reached(c, target) for c in cs],
                target=target,
            )
        )
    return rows


def table(rows: list[dict]) -> str:
    header = ["sweep", "seeds", "member-epochs", "test acc % (final)", "at half the budget",
              f"member-epochs to {100 * rows[0]['target']:.2f}%", "training s"]  # fmt: skip
    body = []
    for r in rows:
        reach = [f"{x:g}" if np.isfinite(x) else "never" for x in r["to_reference"]]
        body.append(
            [
                r["sweep"],
                str(r["seeds"]),
                "/".join(f"{x:g}" for x in sorted(set(r["member_epochs"]))),
                f"{100 * r['final'][0]:.2f} ± {100 * r['final'][1]:.2f}",
                f"{100 * r['half'][0]:.2f} ± {100 * r['half'][1]:.2f}",
                ", ".join(reach),
                f"{np.mean(r['seconds']):.0f}",
            ]
        )
    return tables.format_table(header, body, right=range(1, 7))


def write_report(workdir, curves: dict[str, list[dict]], reference: str) -> str:
    """comparison.json (the curves), comparison.md (the table) and comparison.png (best test
    accuracy against member-epochs, mean and min-max over seeds) in `workdir`."""
    from cnnjax.output import sweep_plots  # matplotlib only where a report is drawn

    rows = summarize(curves, reference)
    text = table(rows)
    workdir = Path(workdir)
    jsonl.write_json(workdir / "comparison.json", {"curves": curves, "rows": rows})
    (workdir / "comparison.md").write_text(text + "\n")
    sweep_plots.plot_budget_curves(curves, rows[0]["target"], workdir / "comparison.png", reference)
    return text
