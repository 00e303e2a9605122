"""Sweeps: config grids -> members -> populations (one program each) and process shards;
per-member results and the table over settings (mean +- std over seeds).

A sweep is a list of axes; an axis is a dict {dotted config field: list of values} whose lists
are zipped (equal lengths); the members are the product of the axes, in order, e.g.

    [{"optim.learning_rate": [0.01, 0.1]}, {"seed": [0, 1]}]                 # 2 x 2 = 4 members
    [{"optim.learning_rate": [0.01, 0.1], "optim.momentum": [0.9, 0.5]}]     # zipped: 2 members

Members that differ only in population.HYPER fields and the seed train together as one
population; any other difference (batch size, network, epochs, ...) makes another program.
A sweep directory holds sweep.json (the base config, the axes, the shard), plan.json (members
per population), populations/<p>/ (population.fit's metrics and checkpoints) and
results.jsonl (a line per finished member); `--shard i/n` runs members i, i+n, i+2n, ... in
DIR/shard-i-of-n, and `merge` assembles the shards' results.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import importlib.util
import itertools
import json
from pathlib import Path

import jax
import ml_collections

from cnnjax import models, parallel, population, report, results, run, runtime


class SweepError(run.RunError):
    """A sweep that cannot start: the message names the field or file and the fix."""


DEFAULTS = dict(layout="auto", max_members=0, memory_budget_mib=0)  # config.sweep's fields
NOT_SWEPT = ("sweep",)  # config sections that describe the sweep itself


def dotted_fields(config, prefix: str = "") -> list[str]:
    """Every leaf field of a ConfigDict as "section.name"."""
    names = []
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            names += dotted_fields(value, f"{prefix}{key}.")
        else:
            names.append(f"{prefix}{key}")
    return names


def _set(config, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        config = config[part]
    config[leaf] = value


def _check_axes(config, axes) -> None:
    if not isinstance(axes, (list, tuple)) or not axes:
        raise SweepError(f"get_sweep() must return a non-empty list of axes, got {axes!r}")
    known, seen = dotted_fields(config), set()
    for axis in axes:
        if not isinstance(axis, dict) or not axis:
            raise SweepError(
                f"each axis must be a non-empty dict {{field: [values]}}, got {axis!r}"
            )
        lengths = {name: len(values) for name, values in axis.items()}
        if len(set(lengths.values())) != 1 or 0 in lengths.values():
            raise SweepError(f"the fields of one axis are zipped and need equally long, non-empty "
                             f"value lists; got lengths {lengths}")  # fmt: skip
        for name in axis:
            if name not in known or name.split(".")[0] in NOT_SWEPT:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise SweepError(f"sweep field {name!r} is not a field of the config{hint}")
            if name in seen:
                raise SweepError(f"sweep field {name!r} appears in two axes")
            seen.add(name)


def axes_from_file(path: str):
    """get_sweep() of the config file at `path`."""
    spec = importlib.util.spec_from_file_location("sweep_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        raise SweepError(f"{path} has no get_sweep(); a sweep config defines get_sweep() "
                         "returning a list of axes (see configs/sweep_lr.py)")  # fmt: skip
    return module.get_sweep()


def expand(config, axes) -> list[dict]:
    """The members' overrides ({field: value}, fields in axis order), checked against `config`
    (every field must exist and accept its values) before anything runs."""
    _check_axes(config, axes)
    zipped = [[dict(zip(axis, values, strict=True)) for values in zip(*axis.values(), strict=True)]
              for axis in axes]  # fmt: skip
    overrides = [{k: v for part in combo for k, v in part.items()}
                 for combo in itertools.product(*zipped)]  # fmt: skip
    for one in overrides:
        try:
            member_config(config, one)
        except (TypeError, ValueError, KeyError) as error:
            raise SweepError(f"the sweep sets {one}, which the config refuses: {error}") from None
    keys = [json.dumps(o, sort_keys=True) for o in overrides]
    if len(set(keys)) != len(keys):
        raise SweepError("the sweep lists the same member twice; remove the repeated values")
    return overrides


def member_config(config, overrides: dict):
    config = copy.deepcopy(config)
    for name, value in overrides.items():
        _set(config, name, value)
    return config


def sweep_settings(config) -> dict:
    """config.sweep's fields (layout, max_members, memory_budget_mib), defaults filled in."""
    given = config.get("sweep", ml_collections.ConfigDict()).to_dict()
    unknown = set(given) - set(DEFAULTS)
    if unknown:
        raise SweepError(
            f"unknown config.sweep fields {sorted(unknown)}; known: {sorted(DEFAULTS)}"
        )
    return {**DEFAULTS, **given}


def program_key(config) -> str:
    """What members must share to train as one program: the config without seed, HYPER fields
    and the sweep section."""
    plain = config.to_dict()
    for name in ("seed", *population.HYPER.values(), *NOT_SWEPT):
        *parents, leaf = name.split(".")
        node = plain
        for part in parents:
            node = node[part]
        node.pop(leaf, None)
    return json.dumps(plain, sort_keys=True, default=str)


def parse_shard(text: str) -> tuple[int, int]:
    """ "i/n" -> (i, n) with 0 <= i < n."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise SweepError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if not 0 <= i < n:
        raise SweepError(f"--shard i/n needs 0 <= i < n, got {text!r}")
    return i, n


def shard_members(count: int, shard: tuple[int, int]) -> list[int]:
    """The members (by index) of shard i of n: i, i+n, i+2n, ... (round robin, so that shards
    get similar mixes of programs)."""
    return list(range(shard[0], count, shard[1]))


def shard_dir(workdir: Path, shard: tuple[int, int]) -> Path:
    i, n = shard
    return Path(workdir) if n == 1 else Path(workdir) / f"shard-{i}-of-{n}"


def fingerprint(config, axes) -> str:
    """Equal for shards of one sweep (same base config, same axes)."""
    text = config.to_json_best_effort(sort_keys=True) + json.dumps(axes, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------ running


def _prepare(directory: Path, description: dict, resume: bool) -> None:
    """Create the sweep directory with sweep.json (the description, and what the sweep starts
    on: runtime.environment()), or check that resuming continues it."""
    path = directory / "sweep.json"
    if resume:
        if not path.exists():
            raise SweepError(f"nothing to resume in {directory}: it has no sweep.json")
        recorded = json.loads(path.read_text())
        recorded.pop(run.ENVIRONMENT, None)
        if recorded != description:
            raise SweepError(f"{directory} holds another sweep (see {path}); resume it with the "
                             "same config, sweep and --shard, or use a new --workdir")  # fmt: skip
        return
    if directory.exists() and any(directory.iterdir()):
        raise SweepError(f"{directory} already holds a sweep; pass --resume to continue it, or "
                         "choose a new --workdir (nothing was changed)")  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    written = {**description, run.ENVIRONMENT: runtime.environment()}
    path.write_text(json.dumps(written, indent=2, sort_keys=True) + "\n")


def _check_member(config, mesh) -> None:
    try:
        parallel.check_divisible(config.train.batch_size, mesh)
    except ValueError as error:
        raise SweepError(f"train.batch_size: {error}") from None
    try:
        run.check_config(config)
    except run.RunError as error:
        raise SweepError(str(error)) from None


def plan(configs: dict, loaded: dict, settings: dict) -> list[list[int]]:
    """Members (by index) of each population: one program's members, in chunks that fit in
    memory (config.sweep.memory_budget_mib, 0: half the free device memory) and at most
    config.sweep.max_members (0: no cap); with the "sequential" layout, one member each."""
    groups: dict[str, list[int]] = {}
    for index, config in configs.items():
        groups.setdefault(program_key(config), []).append(index)
    if population.resolve_layout(settings["layout"]) == "sequential":
        return [[m] for members in groups.values() for m in members]
    budget = settings["memory_budget_mib"] * 2**20 or population.available_bytes() // 2
    populations = []
    for members in groups.values():
        config = configs[members[0]]
        train_feed = loaded[_data_key(config)][0]
        steps = len(train_feed.split[1]) // config.train.batch_size
        per_member = population.member_bytes(models.SPECS[config.model.spec], config, steps,
                                             train_feed)  # fmt: skip
        size = population.members_per_program(per_member, budget, settings["max_members"])
        populations += population.chunks(members, size)
    return populations


def _data_key(config) -> str:
    return json.dumps(config.data.to_dict(), sort_keys=True)


def fit(config, axes, workdir, *, shard=(0, 1), resume: bool = False) -> list[dict]:
    """Run this shard's members of the sweep `axes` over `config` in workdir (see the module
    docstring); returns its results rows (a dict per member). With one shard, also writes the
    table and plot (results.write_report)."""
    overrides = expand(config, axes)  # every error about the sweep comes before any work
    settings = sweep_settings(config)
    layout = population.resolve_layout(settings["layout"])
    mine = shard_members(len(overrides), shard)
    configs = {m: member_config(config, overrides[m]) for m in mine}
    mesh = parallel.make_mesh(jax.local_devices())  # one process; across hosts, use --shard
    for member in configs.values():
        _check_member(member, mesh)
    directory = shard_dir(workdir, shard)
    description = dict(fingerprint=fingerprint(config, axes), shard=list(shard), layout=layout,
                       config=json.loads(config.to_json_best_effort()), axes=axes)  # fmt: skip
    _prepare(directory, description, resume)
    loaded = {}
    for member in configs.values():
        if _data_key(member) not in loaded:
            loaded[_data_key(member)] = run.make_feeds(member, run.load_splits(member), mesh)
    plan_path = directory / "plan.json"
    if plan_path.exists():
        populations = json.loads(plan_path.read_text())
    else:
        populations = plan(configs, loaded, settings)
        plan_path.write_text(json.dumps(populations) + "\n")
    results_path = directory / "results.jsonl"
    done = {row["member"] for row in _read(results_path)}
    for p, members in enumerate(populations):
        if set(members) <= done:
            continue
        rows = _fit_population(p, len(populations), members, configs, overrides, loaded,
                               directory, layout, resume)  # fmt: skip
        with report.MetricsWriter(results_path) as writer:
            for row in rows:
                writer.write(row)
    finished = _read(results_path)
    if shard[1] == 1:
        results.write_report(directory, finished)
    return finished


def _fit_population(p, count, members, configs, overrides, loaded, directory, layout, resume):
    configs_p = [configs[m] for m in members]
    first = configs_p[0]
    feeds = loaded[_data_key(first)]
    pdir = directory / "populations" / str(p)
    pop = population.fit(configs_p, members, pdir, models.SPECS[first.model.spec], feeds,
                         layout=layout, resume=resume and pdir.exists(),
                         label=f"population {p + 1}/{count} ({len(members)} members)")  # fmt: skip
    epochs = report.read_metrics(pdir / "metrics.jsonl", "epoch")
    last = {r["member"]: r for r in epochs if r["epoch"] == first.train.epochs}
    seconds = sum(r["seconds"] for r in epochs if r["member"] == members[0])
    rows = []
    for k, m in enumerate(members):
        end = last[m]
        rows.append(dict(
            kind="member", step=end["step"], member=m, overrides=overrides[m], population=p,
            members_in_population=len(members), test_accuracy=end["test_accuracy"],
            test_loss=end["test_loss"], train_loss=end["train_loss"],
            diverged_at=int(pop.diverged_at[k]) or None, population_seconds=seconds,
            params_hash=run.params_hash(population.member(pop, k).state.params),
        ))  # fmt: skip
    return rows


def _read(path: Path) -> list[dict]:
    return report.read_metrics(path, "member") if path.exists() else []


# ------------------------------------------------------------------------------ merging


def merge(workdir) -> list[dict]:
    """Assemble the results of DIR/shard-*-of-n into DIR/results.jsonl, table and plot; an
    error names any shard that is missing, unfinished or from another sweep."""
    workdir = Path(workdir)
    shards = sorted(workdir.glob("shard-*-of-*"))
    if not shards:
        raise SweepError(f"{workdir} has no shard-i-of-n directories to merge")
    counts = {int(p.name.split("-")[-1]) for p in shards}
    if len(counts) != 1:
        raise SweepError(f"{workdir} mixes shard counts {sorted(counts)}; keep one sweep per DIR")
    n = counts.pop()
    descriptions = {}
    for i in range(n):
        path = shard_dir(workdir, (i, n)) / "sweep.json"
        if not path.exists():
            raise SweepError(f"shard {i}/{n} has not started: run it with --shard {i}/{n}")
        descriptions[i] = json.loads(path.read_text())
    if len({d["fingerprint"] for d in descriptions.values()}) != 1:
        raise SweepError(f"the shards in {workdir} come from different sweeps (config or axes)")
    total = len(expand(ml_collections.ConfigDict(descriptions[0]["config"]),
                       descriptions[0]["axes"]))  # fmt: skip
    merged = []
    for i in range(n):
        rows = _read(shard_dir(workdir, (i, n)) / "results.jsonl")
        expected = len(shard_members(total, (i, n)))
        if len(rows) != expected:
            raise SweepError(f"shard {i}/{n} has finished {len(rows)} of its {expected} members; "
                             f"continue it with --shard {i}/{n} --resume")  # fmt: skip
        merged += rows
    merged.sort(key=lambda r: r["member"])
    (workdir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in merged))
    results.write_report(workdir, merged)
    return merged
