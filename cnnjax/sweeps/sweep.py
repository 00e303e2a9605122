"""Running a sweep, stage by stage (cnnjax.sweeps.stages: one stage for a grid or a one-shot
search, a round each for TPE, a rung each for halving, an interval each for PBT): each stage's
members in populations (one program each, memory-sized chunks), a results row per member as it
ends, the table over settings. cnnjax.sweeps.merging assembles a sharded sweep's results.

A sweep directory holds sweep.json (the base config, the axes or search, the shard),
stages.json (each stage's epochs, members, overrides and sources, appended as it is planned),
plan.json (each stage's populations, appended as it starts), populations/<p>/ (population.fit's
metrics and checkpoints), stages/<s>.json (the rows of the shard's members at the end of stage
s; the other shards of a staged or tpe sweep wait for it) and results.jsonl (a line per member
that has ended, rewritten whole, so that a killed sweep never leaves a member there twice or
half a row; cnnjax.sweeps.results).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax

from cnnjax import parallel
from cnnjax.output import events, jsonl
from cnnjax.sweeps import grid, population, records, results, search, stages
from cnnjax.sweeps.grid import SweepError
from cnnjax.training import RunError, checkpoints, data, run, settings, workdir

METRICS = (
    "epoch/test_accuracy",
    "epoch/test_loss",
    "epoch/validation_accuracy",
    "epoch/train_loss",
)


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
    budget = options["memory_budget_mib"] * 2**20 or grid.available_bytes() // 2
    populations = []
    for members in groups.values():
        config = configs[members[0]]
        train_feed = loaded[_data_key(config)][0]
        steps = len(train_feed.split[1]) // config.train.batch_size
        spec = settings.spec(config)
        per_member = grid.member_bytes(spec, config, steps, train_feed)
        size = grid.members_per_program(per_member, budget, options["max_members"])
        populations += grid.chunks(members, size)
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


def _planned(directory: Path, s: int, mine: list[int], configs, loaded, options):
    """[(p, members)]: the populations of stage s's members in this shard (`mine`) and their
    places p in plan.json, which holds every stage's populations planned so far (a list per
    stage; p counts across stages). A stage is planned (and appended to plan.json) when it
    first starts, so a resumed sweep keeps its populations whatever memory is free now."""
    path = directory / "plan.json"
    stages_planned = records.read_plan(directory)
    offset = sum(len(populations) for populations in stages_planned[:s])
    if s < len(stages_planned):
        ours = list(enumerate(stages_planned[s], start=offset))
        if sorted(m for _, members in ours for m in members) != sorted(mine):
            raise SweepError(
                f"{path} plans other members than stage {s}'s {mine}; "
                "it is not this sweep's: move the directory away and start again"
            )
        return ours
    added = plan(configs, loaded, options) if mine else []
    jsonl.write_json(path, [*stages_planned, added])
    return list(enumerate(added, start=offset))


def fit(config, sweep, sweep_dir, *, shard=(0, 1), resume: bool = False) -> list[dict]:
    """Run this shard's members of `sweep` (grid axes or a search.Search) over `config` in
    sweep_dir (see the module docstring), stage by stage (cnnjax.sweeps.stages); returns its
    results rows (a dict per member). With one shard, also writes the table and plot
    (results.write_report)."""
    searching = search.is_search(sweep)  # every error about the sweep comes before any work
    if searching:
        search.check(config, sweep)
        described, total, members = sweep.to_json(), sweep.members, sweep
    else:
        members = grid.expand(config, sweep)
        described, total = sweep, len(members)
    options = grid.sweep_settings(config)
    layout = population.resolve_layout(options["layout"])
    ours = grid.shard_members(total, shard)
    mesh = parallel.make_mesh(jax.local_devices())  # one process; across hosts, use --shard
    directory = grid.shard_dir(sweep_dir, shard)
    description = dict(
        fingerprint=grid.fingerprint(config, described),
        shard=list(shard),
        layout=layout,
        config=json.loads(config.to_json_best_effort()),
        axes=described,
    )
    epochs, count = config.train.epochs, stages.count(members, config.train.epochs)
    staged = searching and sweep.schedule is not None  # members may end before the last stage
    pbt = staged and isinstance(sweep.schedule, search.PBT)
    stage = stages.plan(members, epochs, 0, [])
    configs = {m: grid.member_config(config, stage.overrides[m]) for m in stage.members}
    _start(directory, description, {m: c for m, c in configs.items() if m in ours}, mesh, resume)
    if parallel.is_primary():  # the HParams dashboard's columns
        summary = events.Events(directory / "tensorboard")
        summary.experiment(stage.overrides[stage.members[0]], METRICS)
        summary.close()
    results_path = directory / "results.jsonl"
    done = _finished(results_path, ours)
    loaded, compiled, history, recorded, order = {}, {}, [], [], []
    for s in range(count):
        records.record(directory, s, stage)
        recorded.append(stage)
        mine = [m for m in stage.members if m in ours]
        configs = {m: grid.member_config(config, stage.overrides[m]) for m in mine}
        for member in configs.values() if s > 0 else ():  # stage 0's: checked by _start
            settings.check(member, mesh)
        loaded = _load(configs, mesh, loaded)
        populations = _planned(directory, s, mine, configs, loaded, options)
        at = directory / "stages" / f"{s}.json"
        rows = records.read_stage(at) if at.exists() else {}
        for p, members_p in populations if not at.exists() else ():
            label = f"population {p + 1} ({len(members_p)} members)"
            if count > 1:
                label = f"stage {s + 1}/{count} {label}"
            place = (p, members_p, directory.relative_to(Path(sweep_dir)))
            new = _fit_population(place, stage, configs, (loaded, compiled), directory, layout,
                                  resume, label, sweep_dir, history)  # fmt: skip
            rows.update(new)
            if not staged:  # a member's row is its result as soon as it is trained
                done.update({m: _result(row, recorded, m, pbt) for m, row in new.items()})
                order += [m for m in members_p if m not in order]
                results.write_rows(results_path, [done[m] for m in _in_order(order, done)])
        if not at.exists():
            at.parent.mkdir(exist_ok=True)
            jsonl.write_json(at, {str(m): rows[m] for m in sorted(rows)})
        if s + 1 < count:  # the next stage depends on this one's rows, every shard's
            history.append(records.every_shard(sweep_dir, shard, s, stage, rows, options))
        following = stages.plan(members, epochs, s + 1, history) if s + 1 < count else None
        ending = [m for m in mine if following is None or m not in following.members]
        for m in ending:
            done[m] = _result(rows[m], recorded, m, pbt)
            order += [m] if m not in order else []
        if staged and ending:
            results.write_rows(results_path, [done[m] for m in _in_order(order, done)])
        stage = following
    finished = [done[m] for m in _in_order(order, done)]
    if resume:  # rewritten whole even when nothing was left to run: an older version's repeats go
        results.write_rows(results_path, finished)
    if shard[1] == 1:
        results.write_report(directory, finished, search=sweep.sampler if searching else None)
    return finished


def _in_order(order: list[int], done: dict) -> list[int]:
    return [m for m in order if m in done]


def _result(row: dict, recorded: list, member: int, pbt: bool) -> dict:
    """A member's results row: its row at the stage it ended (and a PBT member's lineage)."""
    row = {k: v for k, v in row.items() if k not in ("index", "directory")}
    return row | {"lineage": stages.lineage(recorded, member)} if pbt else row


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


def _fit_population(place, stage, configs, cached, directory, layout, resume, label, sweep_dir,
                    history):  # fmt: skip
    """Train population p (place = (p, its members, the shard directory relative to
    sweep_dir)) over stage's epochs, each member starting from its source's state at the
    stage's first epoch (history[-1]'s rows say where that was checkpointed); returns
    {member: its row at the stage's end}. cached = (data key -> feeds, (program, data key) ->
    its step): the populations of one program and data share one compiled step."""
    p, members, shard_path = place
    configs_p = [configs[m] for m in members]
    first = configs_p[0]
    loaded, compiled = cached
    feeds = loaded[_data_key(first)]
    spec = settings.spec(first)
    pdir = directory / "populations" / str(p)
    program = (grid.program_key(first), _data_key(first))
    if program not in compiled:
        steps = settings.steps_per_epoch(len(feeds[0].split[1]), first.train.batch_size)
        compiled[program] = population.make_step(spec, first, steps, layout, feeds[0])

    def start(template):  # the members' states after stage.epochs[0] epochs
        found: dict[str, population.Population] = {}

        def at(m):
            row = history[-1][m]
            if row["directory"] not in found:
                size = row["members_in_population"]
                source = population.template([first] * size, spec, feeds[0])
                found[row["directory"]] = population.load(
                    Path(sweep_dir) / row["directory"], source, stage.epochs[0]
                )
            return found[row["directory"]], row["index"]

        parts = [(*at(stage.sources.get(m, m)), *at(m)) for m in members]
        return population.assemble(template, parts)

    pop = population.fit(
        configs_p,
        members,
        pdir,
        spec,
        feeds,
        layout=layout,
        resume=resume and pdir.exists(),
        label=label,
        epochs=stage.epochs,
        start=start,
        events_dir=directory / "tensorboard",
        hparams={m: stage.overrides[m] for m in members} if stage.epochs[0] == 0 else None,
        step=compiled[program],
    )
    epochs = jsonl.read_metrics(pdir / "metrics.jsonl", "epoch")
    last = {r["member"]: r for r in epochs if r["epoch"] == stage.epochs[1]}
    seconds = sum(r["seconds"] for r in epochs if r["member"] == members[0])
    rows = {}
    for k, m in enumerate(members):
        end = last[m]
        rows[m] = dict(
            kind="member",
            step=end["step"],
            member=m,
            overrides=stage.overrides[m],
            epochs=stage.epochs[1],
            population=p,
            members_in_population=len(members),
            test_accuracy=end["test_accuracy"],
            test_loss=end["test_loss"],
            validation_accuracy=end.get("validation_accuracy"),
            validation_loss=end.get("validation_loss"),
            train_loss=end["train_loss"],
            diverged_at=int(pop.diverged_at[k]) or None,
            population_seconds=seconds,
            params_hash=checkpoints.params_hash(population.member(pop, k).state.params),
            directory=str(shard_path / "populations" / str(p)),
            index=k,
        )
    return rows
