"""A run's config: its fields by dotted name ("optim.learning_rate"), and the one check of every
choice a run reads, made before any data loads or any file appears."""

from __future__ import annotations

import ml_collections

from cnnjax import models, parallel
from cnnjax.training import RunError, feed, train


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
    """Every choice-valued field a run reads is one of its choices, and (given the mesh it will
    run on) the batch splits evenly over its devices; else a RunError naming the field and the
    flag that fixes it."""
    checks = (
        (config.model.spec, sorted(models.SPECS), "model.spec"),
        (config.train.gradients, train.GRADIENTS, "train.gradients"),
        (config.optim.schedule, train.SCHEDULES, "optim.schedule"),
        (config.train.compute_dtype, train.COMPUTE_DTYPES, "train.compute_dtype"),
        (config.train.scan, train.SCANS, "train.scan"),
        (config.data.placement, feed.PLACEMENTS, "data.placement"),
    )
    for value, choices, name in checks:
        if value not in choices:
            raise RunError(
                f"config.{name} must be one of {tuple(choices)}, got {value!r}: pass "
                f"--config.{name}=...; nothing was changed"
            )
    if mesh is not None:
        try:
            parallel.check_divisible(config.train.batch_size, mesh)
        except ValueError as error:
            raise RunError(
                f"config.train.batch_size: {error}: pass --config.train.batch_size=N; "
                "nothing was changed"
            ) from None


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Whole batches in an epoch of `num_examples`; a RunError if there is not even one."""
    if num_examples < batch_size:
        raise RunError(
            f"the training split has {num_examples} examples, fewer than one batch "
            f"of {batch_size}; lower config.train.batch_size"
        )
    return num_examples // batch_size
