"""Check and measure cnnjax on whatever backend JAX finds (cnnjax/bench/device_check.py) into --out.

    python -m experiments.device_check --out runs/device_check
    python -m experiments.device_check --out DIR --config.parts=gradcheck,parity

Prints each part's progress and the results as markdown; writes DIR/device_check.json and .md
(and DIR/train, DIR/benchmark). Exits 1 if a part failed or a check did not pass, 2 on bad
input. On a machine without the internet, first carry what its image lacks:
`python -m experiments.device_wheels` (README: On a GPU or TPU).
"""

from __future__ import annotations

from absl import flags

import experiments
from cnnjax.bench import device_check
from cnnjax.training import RunError

_CONFIG = experiments.config_file("configs/device_check.py")
_OUT = flags.DEFINE_string("out", "runs/device_check", "the results folder (new or empty)")


def main(argv) -> int:
    experiments.begin(argv, deterministic=_CONFIG.value.run.train.deterministic)
    try:
        results = device_check.run_parts(_CONFIG.value, _OUT.value)
    except ValueError as error:  # bad input: the parts, an --out that holds something
        raise RunError(str(error)) from None
    print(device_check.format_results(results))
    print(f"written to {_OUT.value}")
    return 0 if device_check.all_passed(results) else 1


if __name__ == "__main__":
    experiments.run(main)
