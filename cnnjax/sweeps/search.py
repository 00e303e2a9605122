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
validation accuracy, or test accuracy where no validation split is held out (`objective`,
maximised); a member that diverged counts as a failed trial.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings

import numpy as np

from cnnjax.sweeps import grid, population, space

# The ranges, as a config names them (search.LogUniform, ...):
from cnnjax.sweeps.space import RANGES, Choice, IntUniform, LogUniform, Uniform
from cnnjax.training import RunError, settings

SAMPLERS = ("random", "sobol", "halton", "tpe")


def objective(row: dict):
    """What a search maximises, of a results row: the validation accuracy where the sweep holds
    out a validation split (config.data.validation_examples > 0), else the test accuracy."""
    held = row.get("validation_accuracy")
    return row["test_accuracy"] if held is None else held


@dataclasses.dataclass(frozen=True)
class Halving:
    """Successive halving (Jamieson & Talwalkar, 2016; synchronous, as in Li et al., 2020):
    every member trains `min_epochs` epochs; at each rung (min_epochs * eta**k epochs, below
    config.train.epochs) the best 1/eta of the members still training (at least one) go on
    and the others stop there. The learning-rate schedule is the full run's, so a survivor
    trains exactly as its solo run of config.train.epochs would."""

    min_epochs: int = 1
    eta: int = 3


@dataclasses.dataclass(frozen=True)
class PBT:
    """Population based training (Jaderberg et al., 2017), truncation selection: every
    `interval` epochs, each member ranked in the bottom `fraction` takes the state of a member
    of the top `fraction` drawn at random (weights, optimizer and network state; it keeps its
    own data order) and explores: each swept field is drawn anew from its range with
    probability `resample`, else multiplied by one of `perturb` (clipped to the range; a
    choice moves to a neighbouring value). Swept fields must be population.HYPER's, the numbers
    a member may change while it trains."""

    interval: int = 1
    fraction: float = 0.25
    perturb: tuple = (0.8, 1.25)
    resample: float = 0.25


SCHEDULES = {"halving": Halving, "pbt": PBT}


@dataclasses.dataclass(frozen=True)
class Search:
    """`members` members, their fields in `space` drawn by `sampler` from `seed`; with "tpe",
    `round_size` members per round (the first `startup` members are drawn at random);
    `schedule` (Halving or PBT, random and quasi-random samplers) trains them in stages
    (cnnjax.sweeps.stages) instead of each to the end."""

    space: dict
    sampler: str = "random"
    members: int = 16
    seed: int = 0
    round_size: int = 4
    startup: int = 8
    schedule: Halving | PBT | None = None

    def to_json(self) -> dict:
        """A plain dict of JSON's types (sweep.json keeps it, and a resume compares it with what
        sweep.json holds; from_json reads it back)."""
        ranges = {
            field: {"range": _range_name(r), **dataclasses.asdict(r)}
            for field, r in self.space.items()
        }
        fields = dataclasses.asdict(self) | {"space": ranges}
        if self.schedule is not None:
            name = next(n for n, kind in SCHEDULES.items() if type(self.schedule) is kind)
            fields["schedule"] = {name: dataclasses.asdict(self.schedule)}
        return json.loads(json.dumps({"search": fields}))  # tuples (choices, factors) as lists


def _range_name(r) -> str:
    return next(name for name, kind in RANGES.items() if type(r) is kind)


def from_json(description: dict) -> Search:
    fields = dict(description["search"])
    ranges = {}
    for field, r in fields.pop("space").items():
        r = dict(r)
        kind = RANGES[r.pop("range")]
        ranges[field] = kind(**({"values": tuple(r["values"])} if kind is Choice else r))
    if fields.get("schedule") is not None:
        ((name, given),) = fields.pop("schedule").items()
        if "perturb" in given:
            given = given | {"perturb": tuple(given["perturb"])}
        fields["schedule"] = SCHEDULES[name](**given)
    return Search(space=ranges, **fields)


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
        if not _is_int(value) or value < least:
            raise grid.SweepError(f"Search.{name} must be an integer >= {least}, got {value!r}")
    if not isinstance(search.space, dict) or not search.space:
        raise grid.SweepError("Search.space must be a non-empty dict {config field: range}")
    known = settings.dotted_fields(config)
    for field, r in search.space.items():
        grid.check_field(field, known)
        space.check_range(field, r)
        for value in space.ends(r):
            try:
                settings.check(grid.member_config(config, {field: value}))
            except (TypeError, ValueError, KeyError, RunError) as error:
                raise grid.SweepError(
                    f"the search space's {field} reaches {value!r}, which the config refuses: "
                    f"{error}"
                ) from None
    if search.schedule is not None:
        _check_schedule(config, search)


def _check_schedule(config, search) -> None:
    schedule, epochs = search.schedule, config.train.epochs
    if not isinstance(schedule, (Halving, PBT)):
        raise grid.SweepError(
            f"Search.schedule must be Halving(...), PBT(...) or None, got {schedule!r}"
        )
    name = type(schedule).__name__
    if search.sampler == "tpe":
        raise grid.SweepError(
            f"a tpe search trains each round to the end; give {name} a random, sobol or "
            "halton sampler"
        )
    every = "min_epochs" if isinstance(schedule, Halving) else "interval"
    value = getattr(schedule, every)
    if not _is_int(value) or not 1 <= value < epochs:
        raise grid.SweepError(
            f"{name}.{every} must be an integer from 1 to config.train.epochs - 1 "
            f"({epochs - 1}), got {value!r}"
        )
    if isinstance(schedule, Halving):
        if not _is_int(schedule.eta) or schedule.eta < 2:
            raise grid.SweepError(f"Halving.eta must be an integer >= 2, got {schedule.eta!r}")
        return
    if not isinstance(schedule.fraction, (int, float)) or not 0 < schedule.fraction <= 0.5:
        raise grid.SweepError(f"PBT.fraction must be in (0, 0.5], got {schedule.fraction!r}")
    if not isinstance(schedule.resample, (int, float)) or not 0 <= schedule.resample <= 1:
        raise grid.SweepError(f"PBT.resample must be in [0, 1], got {schedule.resample!r}")
    factors = schedule.perturb
    if (
        not isinstance(factors, tuple)
        or not factors
        or not all(isinstance(f, (int, float)) and 0 < f < math.inf for f in factors)
    ):
        raise grid.SweepError(f"PBT.perturb must be a tuple of positive factors, got {factors!r}")
    hyper = set(population.HYPER.values())
    for field in search.space:
        if field not in hyper:
            raise grid.SweepError(
                f"PBT changes the swept fields while members train, which {field} cannot; "
                f"sweep only {sorted(hyper)}"
            )


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
            field: space.from_unit(rg, float(u))
            for (field, rg), u in zip(search.space.items(), p, strict=True)
        }
        for p in points
    ]


def _outcome(optuna, row):
    if row is None or row["diverged_at"] is not None or not math.isfinite(objective(row)):
        return optuna.trial.TrialState.FAIL, None
    return optuna.trial.TrialState.COMPLETE, float(objective(row))


def _plain(value):
    """Optuna's value as the JSON-exact Python number or string a config field holds."""
    return value.item() if isinstance(value, np.generic) else value
