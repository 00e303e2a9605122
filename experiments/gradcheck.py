"""Check every hand-derived gradient rule against jax autodiff and finite differences.

    python -m experiments.gradcheck [--config configs/gradcheck.py] [--config.seed=1]

Prints a line per group of checks as it finishes (a layer case, a network: its worst error,
pass or FAIL), then one row per check and dtype (the worst case of each; every case with
--config.all_rows=True), the failing cases, and a summary; exits 1 if any check failed.
"""

from __future__ import annotations

import time

import experiments
from cnnjax import faults, gradcheck

_CONFIG = experiments.config_file("configs/gradcheck.py")


def main(argv) -> int:
    experiments.begin(argv)
    config = _CONFIG.value
    start = time.perf_counter()
    rows = []
    for group, checked in gradcheck.groups(
        config.num_random_specs, config.seed, tuple(config.dtypes), config.layer_cases
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
