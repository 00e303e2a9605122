"""A layer written outside cnnjax (tests/own_layers.py: PReLU, as a researcher would write it)
is gradient-checked by the public API, caught when its rule is wrong, checked by
`experiments.gradcheck --module`, and runs in a network spec by every gradient path, with no edit
to cnnjax."""

import dataclasses
import functools
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import backprop, gradcheck, layers, models
from tests.builders import REPO, train_command
from tests.own_layers import PReLU


@dataclasses.dataclass(frozen=True)
class PReLUWithoutTheSlope(PReLU):
    """A planted bug, not registered: dx forgets the slope where x <= 0 (as ReLU's would)."""

    def vjp(self, p, x, dy, ctx):
        _, dp = super().vjp(p, x, dy, ctx)
        return jnp.where(x > 0, dy, 0.0), dp


def test_its_rule_passes_the_public_checks():
    rows = gradcheck.assert_layer(PReLU(), (5, 4, 3), batch=2)
    checks = {row.check for row in rows}
    assert {"PReLU/slope vs autodiff", "PReLU/dx vs fd", "PReLU/slope vs fd"} <= checks
    gradcheck.assert_layer(PReLU(), (5, 4, 3), batch=2, data="plateaus")  # its kink policy
    # The same rule as a plain function pair, through check_vjp itself:
    layer, x = PReLU(), np.random.default_rng(0).standard_normal((4, 4, 2))
    p = {"slope": np.array([0.1, 0.5])}
    forward = functools.partial(layer.apply, ctx=layers.EVAL)

    def vjp(p, x, dy):
        dx, dp = layer.vjp(p, x, dy, layers.EVAL)
        return dp, dx

    gradcheck.assert_vjp(forward, vjp, p, x, name="prelu", argnames=("", "dx"))


def test_a_planted_wrong_rule_fails_the_check_naming_it():
    with pytest.raises(AssertionError, match=r"PReLUWithoutTheSlope/dx vs autodiff"):
        gradcheck.assert_layer(PReLUWithoutTheSlope(), (5, 4, 3), batch=2)


def _gradcheck_module(module: str, *extra, cases=1):
    command = [sys.executable, "-m", "experiments.gradcheck", f"--module={module}"]
    command += [f"--config.layer_cases={cases}", *extra]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_the_gradcheck_entry_point_checks_the_kinds_a_module_registers():
    done = _gradcheck_module("tests.own_layers")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "checking PReLU"
    assert "PReLU/slope vs fd" in done.stdout and "Conv/" not in done.stdout
    # a kind with a wrong rule; the workers import the module too
    wrong = _gradcheck_module("tests.own_layers_wrong", "--jobs=2", cases=2)
    assert wrong.returncode == 1
    assert wrong.stdout.splitlines()[0] == "checking PReLU, PReLUWrongSlope"  # it imports PReLU
    assert "PReLUWrongSlope/slope vs fd" in wrong.stdout.split("failed cases:")[1]
    missing = _gradcheck_module("tests.no_such_module")
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        "error: --module tests.no_such_module cannot be imported (No module named "
        "'tests.no_such_module'); pass a module on the Python path (run from its project's "
        "root, or pip install -e it)"
    ]


def test_it_runs_in_a_network_by_every_gradient_path():
    spec = models.SPECS["prelu_cnn"]
    with jax.enable_x64(True):
        params = models.init(jax.random.key(0), spec, (12, 12, 1), jnp.float64)
        x = jax.random.normal(jax.random.key(1), (4, 12, 12, 1), jnp.float64)
        labels = jnp.array([0, 3, 9, 1])
        want = jax.grad(models.loss)(params, x, labels, spec)
        hand = backprop.value_and_grad(params, x, labels, spec)[1]
        twins = jax.grad(models.loss)(params, x, labels, spec, fns=models.HAND_DERIVED)
    assert set(params) == {"conv1", "prelu1", "conv2", "prelu2", "dense1"}
    for got in (hand, twins):
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)  # float64 sums reordered
    rows = gradcheck.check_network(spec, (12, 12, 1), np.random.default_rng(0), "float64")
    assert rows and all(row.passed for row in rows)


@pytest.mark.parametrize("gradients", ["hand", "custom_vjp", "autodiff"])
def test_it_trains_from_the_command_line_without_editing_cnnjax(dataset, tmp_path, gradients):
    """`experiments.train` with --config.model.modules naming the module and its spec."""
    workdir = tmp_path / "run"
    command = train_command(
        dataset,
        workdir,
        2,
        "--config.model.modules=tests.own_layers",
        "--config.model.spec=prelu_cnn",
        f"--config.train.gradients={gradients}",
    )
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = [row["test_loss"] for row in rows if "test_loss" in row]
    assert len(losses) == 2 and losses[1] < losses[0]  # it learns
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["model"]["modules"] == "tests.own_layers"
