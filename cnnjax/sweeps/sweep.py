"""Running a sweep (cnnjax.sweeps.grid has a grid's members, cnnjax.sweeps.search a search's,
asked in rounds): populations (one program each) in memory-sized chunks, a results row per
finished member, the table over settings; and merging the results of a sweep's shards.

A sweep directory holds sweep.json (the base config, the axes or search, the shard), plan.json
(members per population, a round's appended as it starts), asked.json for a search (the
members asked so far), populations/<p>/ (population.fit's metrics and checkpoints) and
results.jsonl (a line per finished member, rewritten whole after each population, so that a
killed sweep never leaves a member there twice or half a row; cnnjax.sweeps.results); `merge`
assembles the shards' results.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import ml_collections

from cnnjax import faults, parallel
from cnnjax.output import jsonl
from cnnjax.sweeps import grid, population, results, search
from cnnjax.sweeps.grid import SweepError
from cnnjax.training import RunError, checkpoints, data, run, settings, workdir


def _start(directory: Path, description: dict, configs: dict, mesh, resume: bool) -> None:
    """Check every member's config for `mesh` and prepare (so check) the data they use, then
    start the sweep directory with sweep.json (the description) or check that resuming
    continues it (cnnjax.training.workdir); any of it failing is a SweepError, and a failure
    before the claim leaves the directory as it was."""
    try:
        for member in configs.values():
            settings.check(member, mesh)
        for section in {_data_key(member): member.data for member in configs.values()}.values():
            data.prepare_section(section)
        workdir.claim(
            directory,
            description,
            resume=resume,
            name="sweep.json",
            kind="sweep",
            same="config, sweep and --shard",
        )
    except RunError as error:
        raise SweepError(str(error)) from None


def plan(configs: dict, loaded: dict, options: dict) -> list[list[int]]:
    """Members (by index) of each population: one program's members, in chunks that fit in
    memory (config.sweep.memory_budget_mib, 0: half the free device memory) and at most
    config.sweep.max_members (0: no cap); with the "sequential" layout, one member each.
    `options`: grid.sweep_settings; `loaded`: each data config's feeds (_load)."""
    groups: dict[str, list[int]] = {}
    for index, config in configs.items():
        groups.setdefault(grid.program_key(config), []).append(index)
    if population.resolve_layout(options["layout"]) == "sequential":
        return [[m] for members in groups.values() for m in members]
    budget = options["memory_budget_mib"] * 2**20 or population.available_bytes() // 2
    populations = []
    for members in groups.values():
        config = configs[members[0]]
        train_feed = loaded[_data_key(config)][0]
        steps = len(train_feed.split[1]) // config.train.batch_size
        spec = settings.spec(config)
        per_member = population.member_bytes(spec, config, steps, train_feed)
        size = population.members_per_program(per_member, budget, options["max_members"])
        populations += population.chunks(members, size)
    return populations


def _data_key(config) -> str:
    return json.dumps(config.data.to_dict(), sort_keys=True)


def _load(configs: dict, mesh, loaded: dict) -> dict:
    """`loaded` with (train feed, test feed) of every data config the members use that it
    lacks, loaded once each."""
    loaded = dict(loaded)
    for member in configs.values():
        if _data_key(member) not in loaded:
            loaded[_data_key(member)] = run.make_feeds(member, run.load_splits(member), mesh)
    return loaded


def _planned(directory: Path, mine: list[int], configs: dict, loaded: dict, options: dict):
    """[(p, members)]: the populations of `mine` (a round's members in this shard) and their
    places in plan.json, which holds every population planned so far. A round is planned (and
    appended to plan.json) when it first starts, so a resumed sweep keeps its populations
    whatever memory is free now."""
    path = directory / "plan.json"
    populations = json.loads(path.read_text()) if path.exists() else []
    ours = [(p, members) for p, members in enumerate(populations) if set(members) & set(mine)]
    if ours:
        if sorted(m for _, members in ours for m in members) != sorted(mine):
            raise SweepError(
                f"{path} plans other members than this round's {mine}; "
                "it is not this sweep's: move the directory away and start again"
            )
        return ours
    if not mine:
        return []
    added = plan(configs, loaded, options)
    jsonl.write_json(path, populations + added)
    return list(enumerate(added, start=len(populations)))


def _record_asked(directory: Path, overrides: dict[int, dict]) -> None:
    """asked.json: the members a search has asked so far ({member: overrides}). A resumed
    search asks again and must get the same: else its sampler is not the one that started it
    (another Optuna version), and going on would mix two searches."""
    path = directory / "asked.json"
    recorded = {int(m): o for m, o in json.loads(path.read_text()).items()} if path.exists() else {}
    for m, before in recorded.items():
        if m in overrides and json.dumps(overrides[m]) != json.dumps(before):
            raise SweepError(
                f"the search now asks {overrides[m]} for member {m}, where {path} records "
                f"{before}: resume with the versions it started with (its config.json's "
                "environment), or start a new --workdir"
            )
    if set(overrides) - set(recorded):
        jsonl.write_json(path, {str(m): overrides[m] for m in sorted(overrides)})
        faults.point("search.asked")


def fit(config, sweep, sweep_dir, *, shard=(0, 1), resume: bool = False) -> list[dict]:
    """Run this shard's members of `sweep` (grid axes or a search.Search) over `config` in
    sweep_dir (see the module docstring); returns its results rows (a dict per member). With
    one shard, also writes the table and plot (results.write_report)."""
    searching = search.is_search(sweep)  # every error about the sweep comes before any work
    if searching:
        search.check(config, sweep)
        if sweep.sampler == "tpe" and shard[1] > 1:
            raise SweepError(
                "a tpe search runs as one shard (each round learns from every member before "
                "it); shard a random, sobol or halton search instead"
            )
        described, rounds, overrides = sweep.to_json(), search.rounds(sweep), {}
        overrides.update(zip(rounds[0], search.ask(sweep, 0, []), strict=True))
    else:
        overrides = dict(enumerate(grid.expand(config, sweep)))
        described, rounds = sweep, [list(overrides)]
    options = grid.sweep_settings(config)
    layout = population.resolve_layout(options["layout"])
    ours = grid.shard_members(sum(map(len, rounds)), shard)
    mesh = parallel.make_mesh(jax.local_devices())  # one process; across hosts, use --shard
    directory = grid.shard_dir(sweep_dir, shard)
    description = dict(
        fingerprint=grid.fingerprint(config, described),
        shard=list(shard),
        layout=layout,
        config=json.loads(config.to_json_best_effort()),
        axes=described,
    )
    configs = {m: grid.member_config(config, overrides[m]) for m in rounds[0] if m in ours}
    _start(directory, description, configs, mesh, resume)
    results_path = directory / "results.jsonl"
    done = _finished(results_path, ours)
    loaded, planned = {}, []
    for r, members_r in enumerate(rounds):
        if searching and r > 0:  # what the rounds before it found
            told = [(overrides[m], done.get(m)) for m in sorted(overrides)]
            overrides.update(zip(members_r, search.ask(sweep, r, told), strict=True))
        if searching:
            _record_asked(directory, overrides)
        mine = [m for m in members_r if m in ours]
        configs = {m: grid.member_config(config, overrides[m]) for m in mine}
        for member in configs.values() if r > 0 else ():  # round 0's: checked by _start
            settings.check(member, mesh)
        loaded = _load(configs, mesh, loaded)
        populations = _planned(directory, mine, configs, loaded, options)
        planned += [members for _, members in populations]
        for p, members in populations:
            if all(m in done for m in members):
                continue
            label = f"population {p + 1}/{len(planned)} ({len(members)} members)"
            if len(rounds) > 1:
                label = f"round {r + 1}/{len(rounds)} {label}"
            args = (members, configs, overrides, loaded, directory, layout, resume, label)
            rows = _fit_population(p, *args)
            done.update((row["member"], row) for row in rows)
            results.write_rows(results_path, [done[m] for m in _in_order(planned) if m in done])
    finished = [done[m] for m in _in_order(planned)]
    if resume:  # rewritten whole even when nothing was left to run: an older version's repeats go
        results.write_rows(results_path, finished)
    if shard[1] == 1:
        results.write_report(directory, finished, search=sweep.sampler if searching else None)
    return finished


def _in_order(populations: list[list[int]]) -> list[int]:
    return [m for members in populations for m in members]


def _finished(path: Path, mine: list[int]) -> dict[int, dict]:
    """member -> its row in the results file at `path`. Repeated identical rows (a killed
    older version's) count once; a member whose rows disagree counts as unfinished, so its
    population's rows are made again from its checkpoint."""
    rows, _ = results.by_member(results.read_rows(path))
    strangers = sorted(set(rows) - set(mine))
    if strangers:
        raise SweepError(
            f"{path} holds members {strangers}, which are not this sweep's (or shard's); "
            "move the file away and rerun with --resume"
        )
    return rows


def _fit_population(p, members, configs, overrides, loaded, directory, layout, resume, label):
    configs_p = [configs[m] for m in members]
    first = configs_p[0]
    feeds = loaded[_data_key(first)]
    pdir = directory / "populations" / str(p)
    pop = population.fit(
        configs_p,
        members,
        pdir,
        settings.spec(first),
        feeds,
        layout=layout,
        resume=resume and pdir.exists(),
        label=label,
    )
    epochs = jsonl.read_metrics(pdir / "metrics.jsonl", "epoch")
    last = {r["member"]: r for r in epochs if r["epoch"] == first.train.epochs}
    seconds = sum(r["seconds"] for r in epochs if r["member"] == members[0])
    rows = []
    for k, m in enumerate(members):
        end = last[m]
        rows.append(
            dict(
                kind="member",
                step=end["step"],
                member=m,
                overrides=overrides[m],
                population=p,
                members_in_population=len(members),
                test_accuracy=end["test_accuracy"],
                test_loss=end["test_loss"],
                train_loss=end["train_loss"],
                diverged_at=int(pop.diverged_at[k]) or None,
                population_seconds=seconds,
                params_hash=checkpoints.params_hash(population.member(pop, k).state.params),
            )
        )
    return rows


# ------------------------------------------------------------------------------ merging


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
