"""cnnjax.output.events: what a run and a sweep write for TensorBoard, read back with
TensorBoard's own loader (EventAccumulator) and compared with the JSONL beside it; a killed
and resumed run shows each step once, with the uninterrupted run's values."""

import os
import signal
import subprocess

import numpy as np
import pytest

from cnnjax.output import events, jsonl
from cnnjax.sweeps import search, sweep
from cnnjax.training import run
from configs import sweep_lr
from tests.builders import REPO, config_for, train_command

# Scalars are stored as float32 (simple_value): a float64 metric comes back within float32's
# rounding, 2**-24 relative.
F32_RTOL = 2.0**-23


def _load(logdir):
    from tensorboard.backend.event_processing import event_accumulator

    loaded = event_accumulator.EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    loaded.Reload()
    return loaded


def _scalars(loaded, tag) -> tuple[list[int], np.ndarray]:
    found = loaded.Scalars(tag)
    return [e.step for e in found], np.array([e.value for e in found])


def _session(loaded) -> dict:
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = loaded.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {name: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
            for name, value in start.hparams.items()}  # fmt: skip


def test_rows_come_back_as_scalars_and_hparams_as_a_session(tmp_path):
    written = events.Events(tmp_path / "tb")
    written.write({"kind": "step", "step": 1, "epoch": 1, "loss": 2.5, "accuracy": 0.125})
    written.write({"kind": "step", "step": 2, "epoch": 1, "loss": float("nan"), "accuracy": 0.25})
    written.write({"kind": "epoch", "step": 2, "epoch": 1, "test_accuracy": 0.8, "note": "x"})
    written.hparams(
        {"optim.learning_rate": 0.1, "optim.nesterov": True, "optim.schedule": "cosine"}
    )
    written.experiment({"optim.learning_rate": 0.1}, ["epoch/test_accuracy"])
    written.close()
    loaded = _load(tmp_path / "tb")
    assert sorted(loaded.Tags()["scalars"]) == ["epoch/test_accuracy", "step/accuracy", "step/loss"]
    assert _scalars(loaded, "step/loss") == ([1], pytest.approx([2.5]))  # the NaN is left out
    steps, values = _scalars(loaded, "step/accuracy")
    assert steps == [1, 2] and values.tolist() == [0.125, 0.25]
    np.testing.assert_allclose(_scalars(loaded, "epoch/test_accuracy")[1], [0.8], rtol=F32_RTOL)
    assert _session(loaded) == {
        "optim.learning_rate": 0.1, "optim.nesterov": True, "optim.schedule": "cosine"
    }  # fmt: skip
    assert "_hparams_/experiment" in loaded.PluginTagToContent("hparams")


def test_a_run_mirrors_every_metrics_row_to_tensorboard(dataset, tmp_path):
    config = config_for(dataset, epochs=2)
    run.fit(config, tmp_path / "run")
    rows = jsonl.read_metrics(tmp_path / "run" / "metrics.jsonl")
    loaded = _load(tmp_path / "run" / "tensorboard")
    for kind, field in [("step", "loss"), ("step", "learning_rate"), ("epoch", "test_accuracy")]:
        want = [(r["step"], r[field]) for r in rows if r["kind"] == kind]
        steps, values = _scalars(loaded, f"{kind}/{field}")
        assert steps == [s for s, _ in want]
        np.testing.assert_allclose(values, [v for _, v in want], rtol=F32_RTOL)


def test_a_killed_and_resumed_run_shows_each_step_once(dataset, tmp_path):
    """Killed after epoch 2's rows (flushed) and its checkpoint's commit but before its
    checksum: the resume starts again from checkpoint 1, and TensorBoard's loader drops what
    the killed process wrote after it (the SessionLog START at the resumed step)."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert subprocess.run(train_command(dataset, whole, 3), cwd=REPO).returncode == 0
    env = dict(os.environ, CNNJAX_KILL_AT="checkpoint.saving:2")
    victim = subprocess.run(train_command(dataset, killed, 3), cwd=REPO, env=env)
    assert victim.returncode == -signal.SIGKILL
    orphaned = _scalars(_load(killed / "tensorboard"), "epoch/test_accuracy")[0]
    assert len(orphaned) == 2  # epoch 2 reached TensorBoard before the kill
    resumed = subprocess.run(train_command(dataset, killed, 3, "--resume"), cwd=REPO)
    assert resumed.returncode == 0
    assert len(list((killed / "tensorboard").iterdir())) == 2  # one file per process
    want, got = _load(whole / "tensorboard"), _load(killed / "tensorboard")
    for tag in ("step/loss", "epoch/test_accuracy", "epoch/test_loss"):
        steps, values = _scalars(got, tag)
        assert len(set(steps)) == len(steps)
        assert (steps, values.tolist()) == (_scalars(want, tag)[0], _scalars(want, tag)[1].tolist())


def test_a_pbt_sweep_shows_each_members_numbers_as_they_change(dataset, tmp_path):
    """Each member: its HParams session, per-step losses, epoch metrics as in its population's
    metrics.jsonl, and hyper/learning_rate at each epoch equal to what its lineage says."""
    config = config_for(dataset, epochs=3)
    config.data.train_examples = 256
    config.sweep = sweep_lr.get_config().sweep
    config.sweep.layout = "sequential"
    space = {"optim.learning_rate": search.LogUniform(0.01, 0.3)}
    pbt = search.Search(space, members=4, seed=1, schedule=search.PBT(interval=1, resample=0.0))
    rows = {r["member"]: r for r in sweep.fit(config, pbt, tmp_path / "s")}
    root = tmp_path / "s" / "tensorboard"
    assert "_hparams_/experiment" in _load(root).PluginTagToContent("hparams")
    steps_per_epoch = 256 // config.train.batch_size
    for m, row in rows.items():
        loaded = _load(root / f"member-{m}")
        assert _session(loaded) == row["lineage"][0]["overrides"]  # as it started
        steps, _ = _scalars(loaded, "step/loss")
        assert steps == list(range(1, 3 * steps_per_epoch + 1))
        rates = dict(zip(*_scalars(loaded, "hyper/learning_rate"), strict=True))
        for epoch in (1, 2, 3):  # what it trained epoch `epoch` with: its lineage's latest
            latest = [stage for stage in row["lineage"] if stage["epoch"] < epoch][-1]
            want = latest["overrides"]["optim.learning_rate"]
            assert rates[epoch * steps_per_epoch] == pytest.approx(want, rel=F32_RTOL)
        test = dict(zip(*_scalars(loaded, "epoch/test_accuracy"), strict=True))
        assert test[3 * steps_per_epoch] == pytest.approx(row["test_accuracy"], rel=F32_RTOL)
    assert any(len(r["lineage"]) > 1 for r in rows.values())  # some member was exploited
