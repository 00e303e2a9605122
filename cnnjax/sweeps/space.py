"""A search space's ranges, the values a search may give one config field: what each range
means, its check, its two ends, and the map from the unit interval onto it (the samplers and
PBT's resampling draw through it)."""

from __future__ import annotations

import dataclasses
import math

from cnnjax.sweeps import grid


@dataclasses.dataclass(frozen=True)
class Uniform:
    """A float drawn uniformly from [low, high]."""

    low: float
    high: float


@dataclasses.dataclass(frozen=True)
class LogUniform:
    """A float whose log is uniform on [log low, log high] (0 < low): learning rates, decays."""

    low: float
    high: float


@dataclasses.dataclass(frozen=True)
class IntUniform:
    """An integer from low to high, both included (log=True: uniform in log)."""

    low: int
    high: int
    log: bool = False


@dataclasses.dataclass(frozen=True)
class Choice:
    """One of `values` (numbers, strings or booleans), each equally likely."""

    values: tuple


RANGES = {
    "uniform": Uniform,
    "log_uniform": LogUniform,
    "int_uniform": IntUniform,
    "choice": Choice,
}


def check_range(field: str, r) -> None:
    """A SweepError naming the field unless `r` is a well-formed range."""
    where = f"the search space's {field}"
    if isinstance(r, (Uniform, LogUniform)):
        ends = (r.low, r.high)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in ends):
            raise grid.SweepError(f"{where} needs finite numbers low and high, got {r}")
        if not r.low < r.high:
            raise grid.SweepError(f"{where} needs low < high, got {r}")
        if isinstance(r, LogUniform) and r.low <= 0:
            raise grid.SweepError(f"{where} is log-uniform and needs 0 < low, got {r}")
    elif isinstance(r, IntUniform):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (r.low, r.high)):
            raise grid.SweepError(f"{where} needs integers low and high, got {r}")
        if not r.low <= r.high or (r.log and r.low < 1):
            raise grid.SweepError(f"{where} needs low <= high (and 1 <= low with log), got {r}")
    elif isinstance(r, Choice):
        values = tuple(r.values)
        if not values or len(set(map(repr, values))) != len(values):
            raise grid.SweepError(f"{where} needs distinct values to choose from, got {r}")
        if not all(isinstance(v, (int, float, str, bool)) for v in values):
            raise grid.SweepError(f"{where} chooses among numbers, strings or booleans, got {r}")
    else:
        names = ", ".join(kind.__name__ for kind in RANGES.values())
        raise grid.SweepError(f"{where} must be a range ({names}), got {r!r}")


def ends(r) -> tuple:
    return tuple(r.values) if isinstance(r, Choice) else (r.low, r.high)


def from_unit(r, u: float):
    """u in [0, 1) onto range r: linearly, in log, or onto equal shares of the integers or
    choices."""
    if isinstance(r, Uniform):
        return r.low + u * (r.high - r.low)
    if isinstance(r, LogUniform):
        return math.exp(math.log(r.low) + u * (math.log(r.high) - math.log(r.low)))
    if isinstance(r, IntUniform) and r.log:
        value = math.exp(math.log(r.low) + u * (math.log(r.high + 1) - math.log(r.low)))
        return min(max(int(value), r.low), r.high)
    if isinstance(r, IntUniform):
        return min(r.low + int(u * (r.high - r.low + 1)), r.high)
    return r.values[min(int(u * len(r.values)), len(r.values) - 1)]
