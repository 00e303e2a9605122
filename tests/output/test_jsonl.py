"""cnnjax.output.jsonl: the metrics file; strict JSON round trips, one line per write readable at
once, appends, and the cut a resumed run makes."""

import json
import math
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax.output import jsonl


def test_metrics_round_trip_numpy_and_jax_scalars_and_nonfinite(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with jsonl.MetricsWriter(path) as writer:
        writer.write(
            kind="step",
            step=jnp.int32(3),
            loss=jnp.float32(0.5),
            accuracy=np.float64(0.25),
            lr=jnp.bfloat16(0.125),
            count=np.int64(7),
            ok=np.bool_(True),
            bad=float("nan"),
            up=np.float32("inf"),
            down=-math.inf,
            hist=jnp.arange(3),
            note="warm-up",
        )
        writer.write({"step": 3, "test_accuracy": 0.9, "kind": "epoch"})
    (line, _) = path.read_text().splitlines()

    def no_bare_constants(name):
        raise AssertionError(f"bare {name} is not JSON")

    raw = json.loads(line, parse_constant=no_bare_constants)  # strict JSON, no bare NaN
    assert (raw["bad"], raw["up"], raw["down"]) == ("NaN", "Infinity", "-Infinity")
    step_row, epoch_row = jsonl.read_metrics(path)
    assert step_row["kind"] == "step" and step_row["step"] == 3 and type(step_row["step"]) is int
    assert (step_row["loss"], step_row["accuracy"], step_row["lr"]) == (0.5, 0.25, 0.125)
    assert type(step_row["loss"]) is float and type(step_row["count"]) is int
    assert step_row["ok"] is True and step_row["note"] == "warm-up"
    assert math.isnan(step_row["bad"]) and step_row["up"] == math.inf
    assert step_row["down"] == -math.inf and step_row["hist"] == [0, 1, 2]
    assert epoch_row == {"kind": "epoch", "step": 3, "test_accuracy": 0.9}
    assert jsonl.read_metrics(path, kind="epoch") == [epoch_row]


def test_a_row_needs_a_kind_and_an_integer_step(tmp_path):
    with jsonl.MetricsWriter(tmp_path / "m.jsonl") as writer:
        with pytest.raises(TypeError, match="step"):
            writer.write(kind="step", step=1.5, loss=0.1)
        with pytest.raises(ValueError, match="kind"):
            writer.write(step=1, loss=0.1)
        assert writer.write({"kind": "step", "step": 1, "loss": 1.0}, loss=0.5)["loss"] == 0.5


def test_each_line_is_readable_while_the_writer_is_open(tmp_path):
    path = tmp_path / "m.jsonl"
    writer = jsonl.MetricsWriter(path)
    for step in range(1, 4):
        writer.write(kind="step", step=step, loss=1.0 / step)
        assert [row["step"] for row in jsonl.read_metrics(path)] == list(range(1, step + 1))
    writer.close()


def test_a_killed_process_keeps_every_line_written(tmp_path):
    path = tmp_path / "m.jsonl"
    script = (
        "import os, signal, sys; from cnnjax.output import jsonl\n"
        "w = jsonl.MetricsWriter(sys.argv[1])\n"
        "for s in range(5): w.write(kind='step', step=s, loss=0.5)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(path)], check=False)
    assert result.returncode == -9
    assert [row["step"] for row in jsonl.read_metrics(path)] == [0, 1, 2, 3, 4]


def test_opening_appends_and_never_overwrites(tmp_path):
    path = tmp_path / "m.jsonl"
    with jsonl.MetricsWriter(path) as writer:
        writer.write(kind="step", step=1, loss=1.0)
    with jsonl.MetricsWriter(path) as writer:
        writer.write(kind="step", step=2, loss=0.5)
    assert [row["step"] for row in jsonl.read_metrics(path)] == [1, 2]


def _log_run(path, first_step, last_step, steps_per_epoch=4):
    with jsonl.MetricsWriter(path) as writer:
        for step in range(first_step, last_step + 1):
            epoch = (step - 1) // steps_per_epoch + 1
            writer.write(dict(kind="step", step=step, epoch=epoch, loss=1.0 / step))
            if step % steps_per_epoch == 0:
                writer.write(dict(kind="epoch", step=step, epoch=epoch, test_accuracy=0.9))


def test_a_resumed_run_writes_the_same_file_as_an_uninterrupted_one(tmp_path):
    whole, resumed = tmp_path / "whole.jsonl", tmp_path / "resumed.jsonl"
    _log_run(whole, 1, 12)
    _log_run(resumed, 1, 10)  # checkpoint at step 8 (end of epoch 2), killed at step 10 ...
    with open(resumed, "a") as f:
        f.write('{"kind": "step", "st')  # ... in the middle of a write
    with pytest.raises(ValueError, match="partial line"):
        jsonl.MetricsWriter(resumed)
    assert len(jsonl.read_metrics(resumed)) == 12  # the partial line is not a row
    assert jsonl.truncate_after(resumed, 8) == 2  # steps 9 and 10
    _log_run(resumed, 9, 12)
    assert resumed.read_bytes() == whole.read_bytes()
    assert jsonl.truncate_after(resumed, 12) == 0
    assert jsonl.truncate_after(tmp_path / "missing.jsonl", 3) == 0


def test_a_malformed_line_in_the_middle_raises(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"kind": "step", "step": 1}\nnot json\n{"kind": "step", "step": 2}\n')
    with pytest.raises(ValueError, match=":2:"):
        jsonl.read_metrics(path)
