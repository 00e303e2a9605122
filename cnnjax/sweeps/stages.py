"""A sweep as stages: which members train, over which epochs, with which overrides, starting
from whose state. Each stage is a pure function of the sweep, its seed and the results of the
stages before it (`history`), so every shard plans the same stages and a resumed sweep plans
what the interrupted one did.

    grid, random, sobol, halton   one stage: every member from epoch 0 to config.train.epochs
    tpe                           a stage per round, each from epoch 0 (cnnjax.sweeps.search)
    Halving                       a stage per rung: the survivors of the rung before go on
    PBT                           a stage per `interval` epochs: every member, the bottom ones
                                  restarted from a top one's state with explored numbers

A member's row at a stage (`history[s][member]`) is a results row (cnnjax.sweeps.results):
its objective (validation accuracy, else test accuracy) and "diverged_at" rank it;
"overrides" are what it trained with.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from cnnjax.sweeps import search as searching
from cnnjax.sweeps import space


class Stage(NamedTuple):
    epochs: tuple[int, int]  # trains from epochs[0] (done) to epochs[1]
    members: list[int]  # by index, in order
    overrides: dict[int, dict]  # member -> its config overrides in this stage
    sources: dict[int, int]  # member -> whose state at epochs[0] it starts from ({}: at 0, its own)

    def to_json(self) -> dict:
        return {
            "epochs": list(self.epochs),
            "members": {
                str(m): {"overrides": self.overrides[m], "from": self.sources.get(m)}
                for m in self.members
            },
        }


def boundaries(sweep, epochs: int) -> list[int]:
    """The epoch each stage ends at (the last: `epochs`, config.train.epochs)."""
    schedule = getattr(sweep, "schedule", None)
    if isinstance(schedule, searching.Halving):
        rungs = [schedule.min_epochs]
        while rungs[-1] * schedule.eta < epochs:
            rungs.append(rungs[-1] * schedule.eta)
        return [*rungs, epochs]
    if isinstance(schedule, searching.PBT):
        return [*range(schedule.interval, epochs, schedule.interval), epochs]
    if searching.is_search(sweep):
        return [epochs] * len(searching.rounds(sweep))
    return [epochs]


def count(sweep, epochs: int) -> int:
    return len(boundaries(sweep, epochs))


def plan(sweep, epochs: int, s: int, history: list[dict]) -> Stage:
    """Stage s of `sweep` (a search.Search, or a grid's list of members' overrides) whose
    members train `epochs` epochs in all, given history[t] = {member: row} for t < s (every
    shard's members)."""
    ends = boundaries(sweep, epochs)
    span = (ends[s - 1] if s > 0 and ends[s - 1] < ends[s] else 0, ends[s])
    if not searching.is_search(sweep):  # a grid: one stage of every member
        return Stage(span, list(range(len(sweep))), dict(enumerate(sweep)), {})
    schedule = sweep.schedule
    if schedule is None or s == 0:
        members = searching.rounds(sweep)[s if schedule is None else 0]
        told = [(row["overrides"], row) for rows in history for _, row in sorted(rows.items())]
        asked = searching.ask(sweep, s if schedule is None else 0, told)
        return Stage(span, members, dict(zip(members, asked, strict=True)), {})
    last = history[s - 1]
    if isinstance(schedule, searching.Halving):
        members = survivors(schedule, last)
        return Stage(span, members, {m: last[m]["overrides"] for m in members}, {})
    sources, overrides = exploit_and_explore(sweep, s, last)
    return Stage(span, sorted(last), overrides, sources)


def score(row: dict) -> float:
    """A row's rank key: its objective (search.objective), or -inf for a member that diverged."""
    value = searching.objective(row)
    if row["diverged_at"] is not None or value is None or not math.isfinite(value):
        return -math.inf
    return float(value)


def ranked(rows: dict[int, dict]) -> list[int]:
    """Members best first; ties go to the lower index."""
    return sorted(rows, key=lambda m: (-score(rows[m]), m))


def survivors(halving, rows: dict[int, dict]) -> list[int]:
    """The best len(rows) // eta members at a rung (at least one; never one that diverged
    unless every one did), in index order."""
    keep = max(1, len(rows) // halving.eta)
    return sorted(ranked(rows)[:keep])


def exploit_and_explore(sweep, s: int, rows: dict[int, dict]) -> tuple[dict, dict]:
    """PBT's step before stage s: (member -> the member whose state it takes, for the bottom
    fraction; member -> overrides, every member's). Draws from a generator seeded by (sweep
    seed, s), so the step is a function of the seed, s and the rows."""
    pbt, order = sweep.schedule, ranked(rows)
    n = min(max(1, round(pbt.fraction * len(order))), len(order) // 2)
    rng = np.random.default_rng(np.random.SeedSequence([sweep.seed, s, 1]))
    top, bottom = order[:n], order[len(order) - n :] if n else []
    overrides = {m: dict(rows[m]["overrides"]) for m in rows}
    sources = {}
    for m in sorted(bottom):
        source = top[int(rng.integers(len(top)))]
        sources[m] = source
        overrides[m] = explore(sweep, pbt, rows[source]["overrides"], rng)
    return sources, overrides


def explore(sweep, pbt, overrides: dict, rng: np.random.Generator) -> dict:
    """`overrides` (a top member's) with every swept field resampled or perturbed."""
    explored = dict(overrides)
    for field, r in sweep.space.items():
        if rng.random() < pbt.resample:
            explored[field] = space.from_unit(r, float(rng.random()))
        elif isinstance(r, searching.Choice):
            at = list(r.values).index(overrides[field]) + int(rng.choice([-1, 1]))
            explored[field] = r.values[min(max(at, 0), len(r.values) - 1)]
        else:
            value = overrides[field] * float(pbt.perturb[int(rng.integers(len(pbt.perturb)))])
            value = min(max(value, r.low), r.high)
            explored[field] = round(value) if isinstance(r, searching.IntUniform) else value
    return explored


def lineage(recorded: list[Stage], member: int) -> list[dict]:
    """A PBT member's history: where it started and, at each exploit, the epoch, the member
    whose state it took and the overrides it went on with."""
    steps = []
    for stage in recorded:
        if member not in stage.members:
            continue
        if not steps or member in stage.sources:
            steps.append(
                {
                    "epoch": stage.epochs[0],
                    "from": stage.sources.get(member),
                    "overrides": stage.overrides[member],
                }
            )
    return steps


def budget(sweep, epochs: int) -> int:
    """The member-epochs `sweep` (a search.Search, or a grid's list of overrides) will spend,
    before it runs: every member for `epochs`, or halving's shrinking rungs."""
    count = sweep.members if searching.is_search(sweep) else len(sweep)
    schedule = getattr(sweep, "schedule", None)
    if not isinstance(schedule, searching.Halving):
        return count * epochs
    total, before = 0, 0
    for end in boundaries(sweep, epochs):
        total, before, count = total + count * (end - before), end, max(1, count // schedule.eta)
    return total


def member_epochs(recorded: list[Stage]) -> int:
    """Epochs trained, summed over members and stages: a sweep's compute budget."""
    return sum(len(st.members) * (st.epochs[1] - st.epochs[0]) for st in recorded)
