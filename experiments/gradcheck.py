"""Check every hand-derived gradient rule against jax autodiff and finite differences.

    python -m experiments.gradcheck [--config configs/gradcheck.py] [--config.seed=1]
    python -m experiments.gradcheck --module my_pkg.my_layers   # the kinds a module registers
    python -m experiments.gradcheck --jobs=2                      # the groups in 2 processes

Prints a line per group of checks as it finishes (a layer case, a network: its worst error,
pass or FAIL), then one row per check and dtype (the worst case of each; every case with
--config.all_rows=True), the failing cases, and a summary; exits 1 if any check failed.
With --module (repeatable), only the layer kinds that importing the module registers
(@cnnjax.layers.register) are checked, on config.layer_cases random cases each.
"""

from __future__ import annotations

import importlib
import time

from absl import flags

import experiments
from cnnjax import faults, gradcheck, layers
from cnnjax.training import RunError

_CONFIG = experiments.config_file("configs/gradcheck.py")
_MODULES = flags.DEFINE_multi_string(
    "module", [], "a Python module that registers layer kinds: check only those (repeatable)"
)
_JOBS = flags.DEFINE_integer(
    "jobs", 1, "processes checking groups side by side (the same rows; compiling is one core's)"
)


def own_kinds(modules) -> list | None:
    """The layer kinds importing `modules` registers (None: no --module given)."""
    if not modules:
        return None
    known = set(layers.KINDS)
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise RunError(
                f"--module {name} cannot be imported ({error}); pass a module on the Python "
                "path (run from its project's root, or pip install -e it)"
            ) from error
    kinds = [kind for name, kind in layers.KINDS.items() if name not in known]
    if not kinds:
        raise RunError(
            f"--module {', '.join(modules)} registers no layer kind: decorate each kind's class "
            "with @cnnjax.layers.register"
        )
    return kinds


def main(argv) -> int:
    experiments.begin(argv)
    config = _CONFIG.value
    if _JOBS.value < 1:
        raise RunError(
            f"--jobs must be at least 1, got {_JOBS.value}; pass --jobs=2 for 2 processes"
        )
    kinds = own_kinds(_MODULES.value)
    if kinds is not None:
        print(f"checking {', '.join(kind.__name__ for kind in kinds)}", flush=True)
    start = time.perf_counter()
    rows = []
    checks = (config.num_random_specs, config.seed, tuple(config.dtypes), config.layer_cases)
    for group, checked in gradcheck.groups(
        *checks, kinds, jobs=_JOBS.value, modules=_MODULES.value
    ):
        rows += checked
        print(gradcheck.progress_line(group, checked), flush=True)
        faults.point("gradcheck.group")
    seconds = time.perf_counter() - start
    print()
    print(gradcheck.format_table(rows if config.all_rows else gradcheck.aggregate(rows)))
    failed = [row for row in rows if not row.passed]
    if failed and not config.all_rows:
        print("\nfailed cases:\n" + gradcheck.format_table(failed))
    print(f"\n{gradcheck.summary(rows)}\nwall time {seconds:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    experiments.run(main)
