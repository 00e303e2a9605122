"""The built-in suite as a plan of groups (cnnjax.gradcheck.suite's checks: one layer case of
every kind, the reference CNN, each random network; per dtype), each group seeded by its place
in the plan alone, so that groups run in any order or in other processes and give the same rows;
`groups` runs them, in `jobs` processes if asked (compiling, which dominates, is single-threaded).
"""

from __future__ import annotations

import concurrent.futures
import functools
import importlib
import itertools
import multiprocessing
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np

from cnnjax import layers, models
from cnnjax.gradcheck.report import Row
from cnnjax.gradcheck.suite import check_network, layer_checks, random_spec


class Group(NamedTuple):
    name: str  # "layers 1/8", "REFERENCE_CNN", "random spec 3/20"
    dtype: str
    run: Callable[[], list[Row]]  # its checks' rows


def plan(num_random_specs=20, seed=0, dtypes=("float32", "float64"), layer_cases=8, kinds=None):
    """[Group] per dtype: "layers 1/8" .. (every layer kind's rule on one case, and the loss),
    "REFERENCE_CNN" (batch 2), "random spec 1/20" .. (batch 3, every other one with label
    smoothing 0.1). With `kinds` (layer kinds, e.g. those a user's module registers): only their
    layer checks, without the loss. A layer case draws one generator per kind (and one for the
    loss), a network one; every dtype sees the same generators, so the same cases and data."""
    own = kinds is not None
    per_case = len(layers.KINDS if kinds is None else kinds) + (not own)
    found = []
    for dtype in dtypes:
        for c in range(layer_cases):
            run = functools.partial(_layer_case, seed, c * per_case, dtype, kinds)
            found.append(Group(f"layers {c + 1}/{layer_cases}", dtype, run))
        if own:
            continue
        start = layer_cases * per_case
        found.append(
            Group("REFERENCE_CNN", dtype, functools.partial(_reference, seed, start, dtype))
        )
        for n in range(num_random_specs):
            run = functools.partial(_random_network, seed, start + 1 + n, n, dtype)
            found.append(Group(f"random spec {n + 1}/{num_random_specs}", dtype, run))
    return found


def _layer_case(seed: int, position: int, dtype: str, kinds) -> list[Row]:
    rngs = (np.random.default_rng([seed, i]) for i in itertools.count(position))
    return layer_checks(rngs, dtype, 1, kinds)


def _reference(seed: int, position: int, dtype: str) -> list[Row]:
    rng = np.random.default_rng([seed, position])
    ref = (models.REFERENCE_CNN, models.REFERENCE_INPUT_SHAPE, rng, dtype)
    return check_network(*ref, prefix="reference_cnn", case="REFERENCE_CNN", batch=2)


def _random_network(seed: int, position: int, n: int, dtype: str) -> list[Row]:
    spec, shape = random_spec(r := np.random.default_rng([seed, position]))
    kw = dict(case=f"random spec {n}", label_smoothing=0.1 * (n % 2))
    return check_network(spec, shape, r, dtype, **kw)


def groups(
    num_random_specs=20,
    seed=0,
    dtypes=("float32", "float64"),
    layer_cases=8,
    kinds=None,
    *,
    jobs: int = 1,
    modules=(),
) -> Iterator[tuple[str, list[Row]]]:
    """(group name, its rows) for every Group of `plan`, in the plan's order, each yielded as
    soon as it and those before it are checked. With jobs > 1 the groups run in that many
    fresh processes (spawned: each imports `modules` first, then the module of every kind
    registered here, so that its registry is this one), with the same rows as in one."""
    args = (num_random_specs, seed, tuple(dtypes), layer_cases)
    planned = plan(*args, kinds)
    if jobs <= 1:
        yield from ((group.name, group.run()) for group in planned)
        return
    kind_names = None if kinds is None else [kind.__name__ for kind in kinds]
    registered = {name: kind.__module__ for name, kind in layers.KINDS.items()}
    modules = tuple(dict.fromkeys([*modules, *registered.values()]))
    context = multiprocessing.get_context("spawn")  # JAX's runtime does not survive a fork
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
        futures = [
            pool.submit(_run_planned, args, kind_names, modules, registered, i)
            for i in range(len(planned))
        ]
        for group, future in zip(planned, futures, strict=True):
            yield group.name, future.result()


def _run_planned(args, kind_names, modules, registered, index: int) -> list[Row]:
    """In a worker process: group `index` of the plan, rebuilt here."""
    for name in modules:
        importlib.import_module(name)
    if missing := [
        f"{name} ({where})" for name, where in registered.items() if name not in layers.KINDS
    ]:
        raise RuntimeError(
            f"layer kinds {', '.join(missing)} are not registered by importing their modules; "
            "define and register them at a module's top level, or run with jobs=1"
        )
    kinds = None if kind_names is None else [layers.KINDS[name] for name in kind_names]
    return plan(*args, kinds)[index].run()


def run_all(num_random_specs=20, seed=0, dtypes=("float32", "float64"), layer_cases=8) -> list[Row]:
    """Every row of `groups`: layer checks, REFERENCE_CNN and random networks, in each dtype."""
    return [row for _, rows in groups(num_random_specs, seed, dtypes, layer_cases) for row in rows]
