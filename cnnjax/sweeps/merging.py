"""Merging a sharded sweep: DIR/shard-i-of-n/results.jsonl (cnnjax.sweeps.sweep, run with
--shard i/n) assembled into DIR/results.jsonl, table and plot, once every shard has finished."""

from __future__ import annotations

import json
from pathlib import Path

import ml_collections

from cnnjax.sweeps import grid, results, search
from cnnjax.sweeps.grid import SweepError


def merge(sweep_dir) -> list[dict]:
    """Assemble the results of DIR/shard-*-of-n into DIR/results.jsonl, table and plot; an
    error names any shard that is missing, unfinished or from another sweep."""
    sweep_dir = Path(sweep_dir)
    shards = sorted(sweep_dir.glob("shard-*-of-*"))
    if not shards:
        raise SweepError(f"{sweep_dir} has no shard-i-of-n directories to merge")
    counts = {int(p.name.split("-")[-1]) for p in shards}
    if len(counts) != 1:
        raise SweepError(f"{sweep_dir} mixes shard counts {sorted(counts)}; keep one sweep per DIR")
    n = counts.pop()
    descriptions = {}
    for i in range(n):
        path = grid.shard_dir(sweep_dir, (i, n)) / "sweep.json"
        if not path.exists():
            raise SweepError(f"shard {i}/{n} has not started: run it with --shard {i}/{n}")
        descriptions[i] = json.loads(path.read_text())
    if len({d["fingerprint"] for d in descriptions.values()}) != 1:
        raise SweepError(f"the shards in {sweep_dir} come from different sweeps (config or axes)")
    axes = descriptions[0]["axes"]
    found = search.from_json(axes) if search.is_search(axes) else None
    if found is not None:
        total, sampler = found.members, found.sampler
    else:
        total, sampler = (
            len(grid.expand(ml_collections.ConfigDict(descriptions[0]["config"]), axes)),
            None,
        )
    merged = []
    for i in range(n):
        path = grid.shard_dir(sweep_dir, (i, n)) / "results.jsonl"
        rows, conflicts = results.by_member(results.read_rows(path))
        if conflicts:
            raise SweepError(
                f"{path} holds different rows for members {conflicts}; "
                f"repair it with --shard {i}/{n} --resume"
            )
        expected = grid.shard_members(total, (i, n))
        if set(rows) - set(expected):
            raise SweepError(
                f"{path} holds members {sorted(set(rows) - set(expected))}, which are not "
                f"shard {i}/{n}'s; move the file away and rerun the shard with --resume"
            )
        if len(rows) != len(expected):
            raise SweepError(
                f"shard {i}/{n} has finished {len(rows)} of its {len(expected)} members; "
                f"continue it with --shard {i}/{n} --resume"
            )
        merged += rows.values()
    merged.sort(key=lambda r: r["member"])
    results.write_rows(sweep_dir / "results.jsonl", merged)
    results.write_report(sweep_dir, merged, search=sampler)
    return merged
