"""cnnjax.output.progress: a bar on a terminal; elsewhere one plain line per bar at its close,
with the numbers a run also writes (checked on a real `python -m experiments.train` and on a
population's epoch); nothing at all when off."""

import json
import os
import re
import subprocess

import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax.output import progress
from cnnjax.sweeps import population
from tests.builders import (
    REPO,
    SMALL_SPEC,
    TRAIN_N,
    member_configs,
    one_device_feed,
    synthetic,
    train_command,
)

# A plain line: the description, then "name value" pairs, img/s, seconds; two spaces between.
EPOCH_LINE = re.compile(
    r"epoch (\d+)/(\d+)  loss (\d+\.\d{4})  acc (\d+\.\d{4})  ([\d,]+) img/s  (\d+\.\d) s"
)


class _Unconvertible:
    def __float__(self):
        raise AssertionError("a value was converted before it was shown")


class _Clock:
    """time.perf_counter for the module: the bar is made at 100.0 s, closed at 102.5 s."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = _Clock()
    monkeypatch.setattr(progress.time, "perf_counter", fake)
    return fake


def test_progress_is_silent_when_disabled(capsys):
    bar = progress.progress(range(5), "epoch 1", enabled=False, images_per_step=32)
    seen = []
    for item in bar:
        seen.append(item)
        bar.set_metrics(loss=_Unconvertible())
    bar.close()
    assert seen == [0, 1, 2, 3, 4]
    assert capsys.readouterr() == ("", "")


def test_progress_off_a_terminal_writes_one_plain_line_at_close(capsys, clock):
    bar = progress.progress(10, "epoch 3/30", images_per_step=32)  # capsys: not a terminal
    for _ in range(10):
        bar.update(1)
        bar.set_metrics(loss=_Unconvertible())  # nothing is drawn, so nothing converted
        assert capsys.readouterr() == ("", "")
    bar.set_metrics(loss=jnp.float32(0.31213), acc=np.float64(0.88764))
    clock.now = 102.5
    bar.close()
    bar.close()  # once only
    out, err = capsys.readouterr()
    # 10 steps of 32 images in 2.5 s: 128 img/s
    assert (out, err) == ("", "epoch 3/30  loss 0.3121  acc 0.8876  128 img/s  2.5 s\n")


def test_progress_line_counts_an_iterable_and_says_when_it_stopped_early(capsys, clock):
    for _ in progress.progress(range(4), "epoch 1/2", images_per_step=1000):
        clock.now += 1.0
    assert capsys.readouterr().err == "epoch 1/2  1,000 img/s  4.0 s\n"
    bar = progress.progress(10, "epoch 2/2")
    bar.update(4)
    bar.close()
    assert capsys.readouterr().err == "epoch 2/2  4/10 steps  0.0 s\n"


def test_progress_line_shows_a_populations_range_and_skips_diverged_members(capsys, clock):
    bar = progress.progress(2, "population 1/2 (3 members) epoch 1/5", images_per_step=3 * 16)
    bar.update(2)
    bar.set_metrics(loss=np.array([0.52, np.nan, 0.31]), acc=jnp.array([np.nan, np.nan]))
    clock.now = 101.0
    bar.close()
    want = "population 1/2 (3 members) epoch 1/5  loss 0.3100..0.5200  acc nan  96 img/s  1.0 s\n"
    assert capsys.readouterr().err == want


def test_a_bar_dropped_without_close_writes_nothing(capsys):
    bar = progress.progress(3, "epoch 1/1")
    bar.update(1)
    del bar
    assert capsys.readouterr() == ("", "")


def test_progress_shows_a_bar_with_the_metrics_when_enabled(capsys):
    bar = progress.progress(3, "epoch 2", enabled=True, images_per_step=32)
    for _ in range(3):
        bar.update(1)
        bar.set_metrics(loss=jnp.float32(0.41), accuracy=np.float64(0.8625))
    bar.close()
    err = capsys.readouterr().err
    assert "epoch 2" in err and "3/3" in err and "loss=0.4100, accuracy=0.8625" in err
    assert "\r" in err and "img/s" not in err  # the tqdm bar, not the plain line


def test_train_writes_a_line_per_epoch_to_a_log(dataset, tmp_path):
    """A real run with stderr to a pipe: one plain line per epoch, its loss and accuracy the
    epoch row's in metrics.jsonl to the 4 decimals shown, its img/s = steps * batch / seconds."""
    command = train_command(dataset, tmp_path / "run", 2)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # as on a cluster
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert not re.search(r"[\r\x1b]", done.stderr)  # no bar drawing, no escape codes
    lines = [EPOCH_LINE.fullmatch(line) for line in done.stderr.splitlines()]
    lines = [m for m in lines if m]
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    rows = [r for r in map(json.loads, metrics) if r["kind"] == "epoch"]
    assert [(int(m[1]), int(m[2])) for m in lines] == [(1, 2), (2, 2)]
    images = TRAIN_N  # 32 steps of 32: the whole fixture split each epoch
    for m, row in zip(lines, rows, strict=True):
        assert m[3] == f"{row['train_loss']:.4f}" and m[4] == f"{row['train_accuracy']:.4f}"
        rate, seconds = float(m[5].replace(",", "")), float(m[6])
        # seconds is shown to 0.05 s and img/s to 0.5: the rate lies within their rounding
        low, high = images / (seconds + 0.05) - 0.5, images / max(seconds - 0.05, 1e-3) + 0.5
        assert low <= rate <= high
        assert seconds <= row["seconds"] + 0.05  # the epoch row adds the evaluation


def test_a_population_epoch_writes_its_members_range(capsys):
    """population._epoch off a terminal: one line, its label, the finite range over members of
    each member's mean over the epoch (as its metrics.jsonl row takes it)."""
    configs = member_configs()[:2]  # two members: a range, at half the compiling of three
    images, labels = synthetic(n=64)
    data = one_device_feed(images, labels)
    steps = 64 // configs[0].train.batch_size
    pop = population.init(configs, SMALL_SPEC, images.shape[1:], steps)
    step = population.make_step(SMALL_SPEC, configs[0], steps, "unroll", data)
    _, seen = population._epoch(pop, step, data, 0, configs[0], "population 1/1 (2 members)")
    (line,) = capsys.readouterr().err.splitlines()
    loss_M = [np.mean(seen["loss"][:, k]) for k in range(2)]
    acc_M = [np.mean(seen["accuracy"][:, k]) for k in range(2)]
    head = (
        f"population 1/1 (2 members) epoch 1/2  loss {min(loss_M):.4f}..{max(loss_M):.4f}  "
        f"acc {min(acc_M):.4f}..{max(acc_M):.4f}  "
    )
    assert line.startswith(head)
    assert re.fullmatch(r"[\d,]+ img/s  \d+\.\d s", line.removeprefix(head))
