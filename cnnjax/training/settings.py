"""A run's config: its fields by dotted name ("optim.learning_rate"), the one check of every
choice a run reads, made before any data loads or any file appears, and the network it names
(`spec`: config.model.spec, after importing config.model.modules, a researcher's own layers)."""

from __future__ import annotations

import importlib
import math
from typing import NamedTuple

import ml_collections

from cnnjax import models, parallel
from cnnjax.training import RunError, feed, idx, train


class Range(NamedTuple):
    """A numeric field's kind ("integer" or "number") and bounds (None: unbounded); `below`:
    the highest value is excluded."""

    kind: str
    lowest: float | None = None
    highest: float | None = None
    below: bool = False


RANGES = {  # every numeric field a run reads
    "seed": Range("integer"),
    "data.shift": Range("integer", 0),
    "data.erase": Range("number", 0, 1),
    "data.train_examples": Range("integer", 0),  # 0: all of them
    "data.validation_examples": Range("integer", 0),  # 0: none held out
    "optim.learning_rate": Range("number", 0),
    "optim.momentum": Range("number", 0, 1),
    "optim.weight_decay": Range("number", 0),
    "optim.warmup_epochs": Range("number", 0),
    "optim.decay_factor": Range("number", 0),
    "train.epochs": Range("integer", 1),
    "train.batch_size": Range("integer", 1),
    "train.label_smoothing": Range("number", 0, 1, below=True),
    "train.steps_per_chunk": Range("integer", 1),
    "train.eval_batch_size": Range("integer", 1),
    "train.checkpoints_kept": Range("integer", 1),
}
SWITCHES = ("data.flip", "optim.nesterov", "train.eval_flip", "train.deterministic")  # True/False


def get(config, dotted: str):
    """config's field `dotted` ("section.name"); config may be a ConfigDict or a plain dict."""
    for part in dotted.split("."):
        config = config[part]
    return config


def put(config, dotted: str, value) -> None:
    """Set config's field `dotted` to `value` (a ConfigDict checks the value's type)."""
    *parents, leaf = dotted.split(".")
    for part in parents:
        config = config[part]
    config[leaf] = value


def drop(plain: dict, dotted: str) -> None:
    """Remove field `dotted` from a plain nested dict, if it is there."""
    *parents, leaf = dotted.split(".")
    for part in parents:
        plain = plain[part]
    plain.pop(leaf, None)


def dotted_fields(config, prefix: str = "") -> list[str]:
    """Every leaf field of a ConfigDict as "section.name", in the config's order."""
    names = []
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            names += dotted_fields(value, f"{prefix}{key}.")
        else:
            names.append(f"{prefix}{key}")
    return names


def check(config, mesh=None) -> None:
    """Every field a run reads holds a value it can use (a choice among its choices, a number
    of the right kind in its RANGES, a switch True or False, the IDX source directory one that
    exists), and (given the mesh it will run on) the batch splits evenly over its devices;
    else a RunError naming the field, the value and the flag that fixes it."""
    for name, bounds in RANGES.items():
        _check_number(get(config, name), name, bounds)
    for name in SWITCHES:
        if not isinstance(get(config, name), bool):
            raise _invalid(name, "True or False", get(config, name))
    for step in _steps(config.optim.decay_epochs):  # epochs where the "step" schedule decays
        _check_number(step, "optim.decay_epochs", Range("number", 0))
    import_modules(config)  # before model.spec: they may add to models.SPECS
    checks = (
        (config.data.name, tuple(idx.DATASETS), "data.name"),
        (config.model.spec, sorted(models.SPECS), "model.spec"),
        (config.train.gradients, train.GRADIENTS, "train.gradients"),
        (config.optim.schedule, train.SCHEDULES, "optim.schedule"),
        (config.train.compute_dtype, train.COMPUTE_DTYPES, "train.compute_dtype"),
        (config.train.scan, train.SCANS, "train.scan"),
        (config.data.placement, feed.PLACEMENTS, "data.placement"),
    )
    for value, choices, name in checks:
        if value not in choices:
            raise _invalid(name, f"one of {tuple(choices)}", value)
    idx.find_source_dir(config.data.name, config.data.source_dir or None)  # an error if absent
    if mesh is not None:
        try:
            parallel.check_divisible(config.train.batch_size, mesh)
        except ValueError as error:
            raise RunError(
                f"config.train.batch_size: {error}: pass --config.train.batch_size=N; "
                "nothing was changed"
            ) from None


def import_modules(config) -> None:
    """Import config.model.modules (comma-separated module names, "" for none), the user's
    modules that register layer kinds (cnnjax.layers.register) and add specs to models.SPECS;
    a RunError naming the first that does not import."""
    modules = config.model.get("modules", "")
    if not isinstance(modules, str):
        raise _invalid("model.modules", "comma-separated module names", modules)
    for name in (m.strip() for m in modules.split(",")):
        if not name:
            continue
        try:
            importlib.import_module(name)
        except Exception as error:  # whatever the module raised: reported in one line
            problem = " ".join(str(error).split())[:200]
            raise RunError(
                f"config.model.modules: cannot import {name} ({type(error).__name__}: {problem}); "
                f"make it importable (run from the directory above it, or add that to "
                f"PYTHONPATH), or pass --config.model.modules=... without it; nothing was changed"
            ) from error


def spec(config):
    """The network config.model.spec names (models.SPECS), after importing config.model.modules;
    a RunError if either is wrong."""
    import_modules(config)
    if config.model.spec not in models.SPECS:
        raise _invalid("model.spec", f"one of {tuple(sorted(models.SPECS))}", config.model.spec)
    return models.SPECS[config.model.spec]


def _check_number(value, name: str, bounds: Range) -> None:
    kinds = (int,) if bounds.kind == "integer" else (int, float)
    low, high = bounds.lowest, bounds.highest
    noun = "an integer" if bounds.kind == "integer" else "a number"
    wanted = noun if low is None else f"{noun} >= {low}"
    if high is not None:
        wanted = f"{wanted} and {'<' if bounds.below else '<='} {high}"
    fine = isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value)
    fine = fine and (low is None or value >= low)
    fine = fine and (high is None or (value < high if bounds.below else value <= high))
    if not fine:
        raise _invalid(name, wanted, value)


def _steps(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _invalid(name: str, wanted: str, value) -> RunError:
    return RunError(
        f"config.{name} must be {wanted}, got {value!r}: pass --config.{name}=...; "
        "nothing was changed"
    )


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Whole batches in an epoch of `num_examples`; a RunError if there is not even one."""
    if num_examples < batch_size:
        raise RunError(
            f"the training split has {num_examples} examples, fewer than one batch "
            f"of {batch_size}; lower config.train.batch_size"
        )
    return num_examples // batch_size
