"""cnnjax.training.run and .analysis: training runs on disk; a whole run, refusal to overwrite, NaN
stops, and a run killed with SIGKILL mid-epoch that resumes to the uninterrupted run's params, bit
for bit."""

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from cnnjax.training import RunError, analysis, checkpoints, run, train, workdir
from tests.builders import REPO, TEST_N, TRAIN_N, config_for, train_command


def test_a_run_writes_metrics_checkpoints_plots_and_refuses_to_be_overwritten(dataset, tmp_path):
    config = config_for(dataset)
    summary = run.fit(config, tmp_path / "run")
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.json", "metrics.jsonl", "summary.json", "checkpoints"} <= files
    assert {"curves.png", "conv1_filters.png", "confusion.png"} <= files
    steps = [r for r in _rows(tmp_path / "run") if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, 2 * TRAIN_N // 32 + 1))
    assert summary["test_accuracy"] > 0.5  # the bands are easy to learn
    started = json.loads((tmp_path / "run" / "config.json").read_text())["environment"]
    ended = json.loads((tmp_path / "run" / "summary.json").read_text())["environment"]
    for env in (started, ended):  # what the run ran on, in both files
        assert env["backend"] == "cpu" and env["device_count"] == 1 and env["versions"]["jax"]
        assert env["runtime"]["platform"] == "cpu" and "xla_flags" in env
    assert ended["data_placement"] == "device" and ended["scan"] is False  # "auto" on a CPU
    assert "environment" not in workdir.load_config(tmp_path / "run")  # the config alone
    assert "accuracy" in analysis.evaluation_report(tmp_path / "run")
    before = (tmp_path / "run" / "metrics.jsonl").read_bytes()
    with pytest.raises(RunError, match="already holds a run; pass --resume"):
        run.fit(config, tmp_path / "run")
    assert (tmp_path / "run" / "metrics.jsonl").read_bytes() == before
    other = config_for(dataset)
    other.seed = 1
    with pytest.raises(RunError, match="started with another config"):
        run.fit(other, tmp_path / "run", resume=True)


def test_two_runs_of_one_config_end_with_the_same_params(dataset, tmp_path):
    config = config_for(dataset, epochs=1)
    first = run.fit(config, tmp_path / "a")["params_hash"]
    assert run.fit(config, tmp_path / "b")["params_hash"] == first
    config.seed = 1
    assert run.fit(config, tmp_path / "c")["params_hash"] != first


def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(dataset, tmp_path):
    config = config_for(dataset, epochs=3)
    config.optim.schedule, config.optim.decay_epochs, config.optim.decay_factor = "step", (1,), 1e9
    with pytest.raises(RunError, match=r"the loss became (nan|inf) in epoch 2.*learning_rate"):
        run.fit(config, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["1"]
    assert "accuracy" in analysis.evaluation_report(tmp_path / "run")


# The learning rate times `factor` from the last step of epoch `epoch` on (31 of 32 steps in):
# the epoch's training loss stays finite, its params and test loss blow up.
@pytest.mark.parametrize(
    ("epoch", "factor", "kept"),
    [(1, 1e38, "it has no checkpoint"), (2, 1e30, r"its last good checkpoint \(epoch 1\) is kept")],
    ids=["in_epoch_1", "in_epoch_2"],
)
def test_a_run_whose_test_loss_blows_up_stops_before_checkpointing_it(
    dataset, tmp_path, epoch, factor, kept
):
    config = config_for(dataset, epochs=2)
    config.optim.schedule, config.optim.decay_factor = "step", factor
    config.optim.decay_epochs = (epoch - 1 + 31 / 32,)
    blown_up = r"(the test loss became \S+ after|the params became non-finite in)"
    with pytest.raises(RunError, match=rf"{blown_up} epoch {epoch} .*the run stopped and {kept}"):
        run.fit(config, tmp_path / "run")
    epochs = [r for r in _rows(tmp_path / "run") if r["kind"] == "epoch"]
    assert len(epochs) == epoch and np.isfinite(epochs[-1]["train_loss"])
    assert not epochs[-1]["test_loss"] < train.DIVERGED_LOSS  # recorded, not checkpointed
    assert checkpoints.saved_epochs(tmp_path / "run") == list(range(1, epoch))


def test_resuming_a_finished_run_says_so_and_rewrites_nothing(dataset, tmp_path, capsys):
    config = config_for(dataset, epochs=1)
    summary = run.fit(config, tmp_path / "run")
    before = _snapshot(tmp_path / "run")
    capsys.readouterr()
    again = run.fit(config, tmp_path / "run", resume=True)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"{tmp_path / 'run'} had finished training (epoch 1 of 1): nothing was trained or "
        "written. Its summary.json:"
    ]
    assert again == json.loads((tmp_path / "run" / "summary.json").read_text())
    assert again["params_hash"] == summary["params_hash"]
    assert _snapshot(tmp_path / "run") == before


def _snapshot(directory):
    """Every file under `directory`, bar the lock (it names its holder): bytes and mtime."""
    files = sorted(p for p in Path(directory).rglob("*") if p.is_file() and p.name != workdir.LOCK)
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


def _rows(workdir):
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def _train(workdir, dataset, epochs, *extra):
    command = train_command(dataset, workdir, epochs, *extra)
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for_step_of_epoch(workdir, epoch, process, timeout_s=120):
    path, deadline = Path(workdir) / "metrics.jsonl", time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        if path.exists() and f'"kind": "step", "step": {(epoch - 1) * 32 + 5}' in path.read_text():
            return
        time.sleep(0.01)
    raise AssertionError(f"epoch {epoch} never started: {process.communicate()[0].decode()}")


def test_a_killed_run_resumes_to_the_uninterrupted_params_bit_for_bit(dataset, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    uninterrupted = _train(whole, dataset, 3)
    victim = _train(killed, dataset, 3)
    _wait_for_step_of_epoch(killed, 2, victim)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert uninterrupted.wait() == 0, uninterrupted.communicate()[0].decode()
    assert not (killed / "summary.json").exists()
    assert (killed / "checkpoints" / "1").exists() and not (killed / "checkpoints" / "3").exists()
    assert max(r["step"] for r in _rows(killed)) > 32  # it died inside epoch 2

    resumed = _train(killed, dataset, 3, "--resume")
    assert resumed.wait() == 0, resumed.communicate()[0].decode()
    want = json.loads((whole / "summary.json").read_text())
    got = json.loads((killed / "summary.json").read_text())
    assert got["params_hash"] == want["params_hash"]
    assert got["test_accuracy"] == want["test_accuracy"]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(_rows(killed)) == strip(_rows(whole))


def test_per_example_report_ranks_examples_by_loss_and_measures_their_gradients(dataset, tmp_path):
    run.fit(config_for(dataset, epochs=1), tmp_path / "run")
    summary = analysis.per_example_report(tmp_path / "run", top=4)
    assert summary["examples"] == TEST_N
    saved = np.load(tmp_path / "run" / "per_example.npz")
    assert saved["loss"].shape == saved["grad_norm"].shape == (TEST_N,)
    assert np.all(saved["grad_norm"] >= 0) and summary["max_grad_norm"] == saved["grad_norm"].max()
    # A wrong example gets a larger gradient than a confident right one: norms follow losses.
    assert summary["loss_norm_correlation"] > 0.5
    for name in ("grad_norms.png", "hardest.png"):
        assert (tmp_path / "run" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_validation_split_is_the_last_training_examples_held_out(dataset):
    """validation_examples=V: the last V training examples, whatever the seed; training keeps
    the ones before them (then train_examples of those); the test split is untouched."""
    config = config_for(dataset)
    config.data.train_examples = 0
    (train_all, labels_all), test = run.load_splits(config)
    config.data.validation_examples = 200
    (images, _), test_again, (held, held_labels) = run.load_splits(config)
    np.testing.assert_array_equal(held, train_all[-200:])
    np.testing.assert_array_equal(held_labels, labels_all[-200:])
    np.testing.assert_array_equal(images, train_all[: TRAIN_N - 200])
    np.testing.assert_array_equal(test_again[0], test[0])
    config.data.train_examples, config.seed = 100, 7
    (first, _), _, (held_again, _) = run.load_splits(config)
    np.testing.assert_array_equal(first, train_all[:100])
    np.testing.assert_array_equal(held_again, held)
    config.data.validation_examples = TRAIN_N
    with pytest.raises(RunError, match=r"validation_examples=1024 leaves no training examples"):
        run.load_splits(config)
