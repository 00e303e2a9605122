"""cnnjax.ops.highest_precision, the precision policy: every dot and convolution that the gradient
checks and the Flax parity compile is HIGHEST, seen in the programs XLA receives (dumped by a fresh
process), so that their float32 tolerances mean float32 arithmetic on GPUs (TF32 by default) and
TPUs (bfloat16)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.builders import REPO

# The checks, small, then a control compiled outside the policy: its dot must show up as not
# HIGHEST, or the parsing below could pass by seeing nothing. float32 alone: its tolerances are
# what the policy protects (float64 has no lower-precision default on any backend).
PROBE = """
import jax, jax.numpy as jnp
from cnnjax import flax_models, gradcheck, models
rows = gradcheck.run_all(num_random_specs=1, seed=0, dtypes=("float32",), layer_cases=1)
assert rows and all(row.passed for row in rows)
params = models.init(jax.random.key(0), models.REFERENCE_CNN, (28, 28, 1))
x, labels = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1)), jnp.arange(4)
assert all(row.passed for row in flax_models.parity_report(params, models.REFERENCE_CNN, x, labels))

def control_outside_policy(a):
    return a @ a

jax.jit(control_outside_policy)(jnp.ones((4, 4)))
"""
INSTRUCTION = re.compile(r"= \S+ (convolution|dot)\(.*")


def _precision_by_module(dump_dir) -> dict[str, list[tuple[str, bool]]]:
    """module name -> [(op, has operand_precision={highest,highest})] for each convolution and
    dot in the HLO that XLA received (before its own passes)."""
    found = {}
    for name in sorted(os.listdir(dump_dir)):
        if name.endswith(".before_optimizations.txt"):
            text = (dump_dir / name).read_text()
            ops = [
                (m.group(1), "operand_precision={highest,highest}" in m.group(0))
                for m in INSTRUCTION.finditer(text)
            ]
            if ops:
                found[name.removesuffix(".before_optimizations.txt")] = ops
    return found


@pytest.mark.slow
def test_every_dot_and_convolution_of_the_checks_is_highest(tmp_path):
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={tmp_path}"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # a program loaded from a cache is not dumped
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = _precision_by_module(tmp_path)
    control = [m for m in found if "control_outside_policy" in m]
    assert len(control) == 1 and found.pop(control[0]) == [("dot", False)]
    ops = [op for module_ops in found.values() for op in module_ops]
    not_highest = {m: o for m, o in found.items() if not all(h for _, h in o)}
    assert not not_highest, f"dots or convolutions below HIGHEST: {not_highest}"
    # The checks compiled many programs with convolutions and dots: every layer kind's with
    # params, two networks, then three parity programs.
    assert len(found) >= 8 and {op for op, _ in ops} == {"convolution", "dot"}  # 10 here
