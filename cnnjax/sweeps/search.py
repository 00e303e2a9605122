"""A sweep over ranges: a search space, a sampler (Optuna's) and a member budget, as a config's
get_sweep() may return instead of grid axes (cnnjax.sweeps.grid):

    search.Search(
        space={
            "optim.learning_rate": search.LogUniform(0.01, 0.5),
            "optim.weight_decay": search.LogUniform(1e-5, 1e-2),
            "train.label_smoothing": search.Uniform(0.0, 0.2),
        },
        sampler="tpe", members=24, seed=0,
    )

Samplers (SAMPLERS): "random" (Optuna's RandomSampler) and the quasi-random "sobol" and
"halton" (scipy.stats.qmc, scrambled) draw every member at once from the seed, so a search is
then a list of members like a grid's (shards, populations and merging as for a grid); "tpe"
(Bergstra et al., 2011, Optuna's TPESampler) asks in rounds of `round_size` members, each round
from the results of the rounds before it: one population per round, where the layout puts
members in one program.

Determinism: round r is a function of (space, seed, r, the results of rounds < r) alone: its
study is rebuilt from those results and its sampler seeded with (seed, r), so an interrupted
sweep that resumes asks exactly what the uninterrupted one asked, and sweep.fit refuses one
whose sampler now asks otherwise (another Optuna version). The objective is the member's final
test accuracy (maximised); a member that diverged counts as a failed trial.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np

from cnnjax.sweeps import grid
from cnnjax.training import RunError, settings

SAMPLERS = ("random", "sobol", "halton", "tpe")
OBJECTIVE = "test_accuracy"  # of a results row; maximised


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


@dataclasses.dataclass(frozen=True)
class Search:
    """`members` members, their fields in `space` drawn by `sampler` from `seed`; with "tpe",
    `round_size` members per round (the first `startup` members are drawn at random)."""

    space: dict
    sampler: str = "random"
    members: int = 16
    seed: int = 0
    round_size: int = 4
    startup: int = 8

    def to_json(self) -> dict:
        """A plain dict (sweep.json keeps it; from_json reads it back)."""
        space = {
            field: {"range": _range_name(r), **dataclasses.asdict(r)}
            for field, r in self.space.items()
        }
        fields = dataclasses.asdict(self) | {"space": space}
        return {"search": fields}


def _range_name(r) -> str:
    return next(name for name, kind in RANGES.items() if type(r) is kind)


def from_json(description: dict) -> Search:
    fields = dict(description["search"])
    space = {}
    for field, r in fields.pop("space").items():
        r = dict(r)
        kind = RANGES[r.pop("range")]
        space[field] = kind(**({"values": tuple(r["values"])} if kind is Choice else r))
    return Search(space=space, **fields)


def is_search(sweep) -> bool:
    """Whether a get_sweep() result (or sweep.json's record of one) is a search, not axes."""
    return isinstance(sweep, Search) or (isinstance(sweep, dict) and "search" in sweep)


# ------------------------------------------------------------------------------- checking


def check(config, search) -> None:
    """A SweepError naming the problem and the fix unless `search` is a Search whose fields are
    the config's and whose ranges are ranges the config accepts at both ends (every choice)."""
    if not isinstance(search, Search):
        raise grid.SweepError(f"get_sweep() must return a list of axes or a Search, got {search!r}")
    if search.sampler not in SAMPLERS:
        raise grid.SweepError(f"Search.sampler must be one of {SAMPLERS}, got {search.sampler!r}")
    for name, least in (("members", 1), ("round_size", 1), ("startup", 0), ("seed", 0)):
        value = getattr(search, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise grid.SweepError(f"Search.{name} must be an integer >= {least}, got {value!r}")
    if not isinstance(search.space, dict) or not search.space:
        raise grid.SweepError("Search.space must be a non-empty dict {config field: range}")
    known = settings.dotted_fields(config)
    for field, r in search.space.items():
        grid.check_field(field, known)
        _check_range(field, r)
        for value in _ends(r):
            try:
                settings.check(grid.member_config(config, {field: value}))
            except (TypeError, ValueError, KeyError, RunError) as error:
                raise grid.SweepError(
                    f"the search space's {field} reaches {value!r}, which the config refuses: "
                    f"{error}"
                ) from None


def _check_range(field: str, r) -> None:
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


def _ends(r) -> tuple:
    return tuple(r.values) if isinstance(r, Choice) else (r.low, r.high)


# ------------------------------------------------------------------------------- asking


def rounds(search: Search) -> list[list[int]]:
    """The members (by index) of each round: all of them at once for the samplers that do not
    learn from results, `round_size` at a time for "tpe"."""
    size = search.round_size if search.sampler == "tpe" else search.members
    members = list(range(search.members))
    return [members[i : i + size] for i in range(0, len(members), size)]


def ask(search: Search, r: int, told: list[tuple[dict, dict | None]]) -> list[dict]:
    """Round r's members' overrides ({field: value}, in space order), given `told`: every
    earlier member's (overrides, results row or None for one without a result), in order."""
    if search.sampler in ("sobol", "halton"):
        return _quasi_random(search, r)
    import optuna  # only where a search is run

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = {field: _distribution(optuna, r_) for field, r_ in search.space.items()}
    with warnings.catch_warnings():  # QMCSampler and TPE's options are "experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(direction="maximize", sampler=_sampler(optuna, search, r))
        for overrides, row in told:
            state, value = _outcome(optuna, row)
            trial = optuna.trial.create_trial(
                params=overrides, distributions=distributions, value=value, state=state
            )
            study.add_trial(trial)
        asked = [study.ask(distributions).params for _ in rounds(search)[r]]
    return [{field: _plain(params[field]) for field in search.space} for params in asked]


def _distribution(optuna, r):
    d = optuna.distributions
    if isinstance(r, Uniform):
        return d.FloatDistribution(float(r.low), float(r.high))
    if isinstance(r, LogUniform):
        return d.FloatDistribution(float(r.low), float(r.high), log=True)
    if isinstance(r, IntUniform):
        return d.IntDistribution(r.low, r.high, log=r.log)
    return d.CategoricalDistribution(tuple(r.values))


def _seed(search: Search, r: int) -> int:
    return int(np.random.SeedSequence([search.seed, r]).generate_state(1)[0])


def _sampler(optuna, search: Search, r: int):
    seed = _seed(search, r)
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(
        seed=seed,
        n_startup_trials=search.startup,
        multivariate=True,  # models the fields jointly: learning rate and decay interact
        constant_liar=True,  # members asked together in a round are spread apart
        warn_independent_sampling=False,
    )


def _quasi_random(search: Search, r: int) -> list[dict]:
    """The members' points of a scrambled Sobol or Halton sequence (scipy.stats.qmc) in the unit
    cube, one dimension per field, each mapped onto its range. (Optuna's QMCSampler draws at
    random until a trial has completed, so a whole round asked at once would be random.)
    Sobol's balance holds for a power-of-2 number of members."""
    from scipy.stats import qmc

    kind = qmc.Sobol if search.sampler == "sobol" else qmc.Halton
    engine = kind(d=len(search.space), scramble=True, seed=_seed(search, r))
    with warnings.catch_warnings():  # Sobol's note on sample sizes that are not powers of 2
        warnings.simplefilter("ignore", UserWarning)
        points = engine.random(len(rounds(search)[r]))
    return [
        {
            field: _from_unit(rg, float(u))
            for (field, rg), u in zip(search.space.items(), p, strict=True)
        }
        for p in points
    ]


def _from_unit(r, u: float):
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


def _outcome(optuna, row):
    if row is None or row["diverged_at"] is not None or not math.isfinite(row[OBJECTIVE]):
        return optuna.trial.TrialState.FAIL, None
    return optuna.trial.TrialState.COMPLETE, float(row[OBJECTIVE])


def _plain(value):
    """Optuna's value as the JSON-exact Python number or string a config field holds."""
    return value.item() if isinstance(value, np.generic) else value
