"""A sweep's grid: config axes -> members' overrides, checked before anything runs; which
members can share a program, and how many fit in memory at once; the shards of a sweep.

A sweep is a list of axes; an axis is a dict {dotted config field: list of values} whose lists
are zipped (equal lengths); the members are the product of the axes, in order, e.g.

    [{"optim.learning_rate": [0.01, 0.1]}, {"seed": [0, 1]}]                 # 2 x 2 = 4 members
    [{"optim.learning_rate": [0.01, 0.1], "optim.momentum": [0.9, 0.5]}]     # zipped: 2 members

Members that differ only in population.HYPER fields and the seed train together as one
population; any other difference (batch size, network, epochs, ...) makes another program.
`--shard i/n` runs members i, i+n, i+2n, ... in DIR/shard-i-of-n.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import importlib.util
import itertools
import json
import os
from pathlib import Path

import jax
import ml_collections

from cnnjax.sweeps import population
from cnnjax.training import RunError, settings


class SweepError(RunError):
    """A sweep that cannot start: the message names the field or file and the fix."""


# config.sweep's fields; wait_minutes: how long a shard of a staged or tpe sweep waits for the
# other shards to finish a stage
DEFAULTS = dict(layout="auto", max_members=0, memory_budget_mib=0, wait_minutes=60)
NOT_SWEPT = ("sweep",)  # config sections that describe the sweep itself


def check_field(name: str, known: list[str]) -> None:
    """A SweepError (with the closest field) unless `name` is a field a sweep may set."""
    if name not in known or name.split(".")[0] in NOT_SWEPT:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise SweepError(f"sweep field {name!r} is not a field of the config{hint}")


def _check_axes(config, axes) -> None:
    if not isinstance(axes, (list, tuple)) or not axes:
        raise SweepError(f"get_sweep() must return a non-empty list of axes, got {axes!r}")
    known, seen = settings.dotted_fields(config), set()
    for axis in axes:
        if not isinstance(axis, dict) or not axis:
            raise SweepError(
                f"each axis must be a non-empty dict {{field: [values]}}, got {axis!r}"
            )
        lengths = {name: len(values) for name, values in axis.items()}
        if len(set(lengths.values())) != 1 or 0 in lengths.values():
            raise SweepError(
                f"the fields of one axis are zipped and need equally long, non-empty "
                f"value lists; got lengths {lengths}"
            )
        for name in axis:
            check_field(name, known)
            if name in seen:
                raise SweepError(f"sweep field {name!r} appears in two axes")
            seen.add(name)


def axes_from_file(path: str):
    """get_sweep() of the config file at `path`."""
    spec = importlib.util.spec_from_file_location("sweep_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        raise SweepError(
            f"{path} has no get_sweep(); a sweep config defines get_sweep() returning a list "
            "of axes (configs/sweep_lr.py) or a search.Search (configs/search_tpe.py)"
        )
    return module.get_sweep()


def expand(config, axes) -> list[dict]:
    """The members' overrides ({field: value}, fields in axis order), checked against `config`
    (every field must exist and accept its values) before anything runs."""
    _check_axes(config, axes)
    zipped = [
        [dict(zip(axis, values, strict=True)) for values in zip(*axis.values(), strict=True)]
        for axis in axes
    ]
    overrides = [
        {k: v for part in combo for k, v in part.items()} for combo in itertools.product(*zipped)
    ]
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
        settings.put(config, name, value)
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
        settings.drop(plain, name)
    return json.dumps(plain, sort_keys=True, default=str)


# ------------------------------------------------------------------ programs in memory


def available_bytes() -> int:
    """Free memory of the default device: the accelerator's allocator limit minus what is in
    use, or the host's available RAM on CPU."""
    stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def member_bytes(spec, config, steps_per_epoch: int, feed) -> int:
    """Device memory one more member costs: its state (in and out of a step) plus the step's
    temporaries, from XLA's memory analysis of a one-member program."""
    images = feed.split[0]
    pop = jax.eval_shape(lambda: population.init([config], spec, images.shape[1:], steps_per_epoch))
    batch = feed.abstract_batch((1, config.train.batch_size))
    step = population.make_step(spec, config, steps_per_epoch, "unroll", feed)
    analysis = step.lower(pop, feed.resident, batch).compile().memory_analysis()
    state_bytes = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(pop))
    temp = analysis.temp_size_in_bytes if analysis is not None else 0
    return int(2 * state_bytes + temp)


def members_per_program(per_member: int, budget: int, cap: int = 0) -> int:
    """How many members one program holds: as many as fit in `budget` bytes (at least one), at
    most `cap` (0: no cap)."""
    fit = max(1, budget // max(per_member, 1))
    return int(min(fit, cap) if cap > 0 else fit)


def chunks(items, size: int) -> list:
    """items cut into consecutive lists of at most `size` (the last may be shorter)."""
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


# ------------------------------------------------------------------------------ shards


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
