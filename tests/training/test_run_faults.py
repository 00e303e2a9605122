"""cnnjax.training.run under faults, in real processes (python -m experiments.train): killed
(SIGKILL, cnnjax.faults) at chosen points of training and of checkpointing, with a damaged
latest checkpoint, diverging, or sharing its workdir with a second process. Every resumed run
ends with the uninterrupted run's params hash and metrics, bit for bit.

Each process's startup and compiles dominate its time, so the runs are small (8 steps per
epoch, 3 epochs), share one JAX compilation cache (the same programs, loaded instead of
compiled again: the bit-for-bit comparison across separate compiles is test_run.py's), and
start side by side: the uninterrupted run with the killed ones, then every resume at once."""

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from cnnjax.training import checkpoints, workdir
from tests.builders import REPO, compile_cache_env, train_command

EPOCHS = 3
SMALL = ("--config.data.train_examples=256",)  # 8 steps of 32 per epoch
# The learning rate times 1e30 for the last of epoch 2's 8 steps: params ~1e27, still finite.
BLOW_UP = (
    "--config.optim.schedule=step",
    "--config.optim.decay_factor=1e30",
    "--config.optim.decay_epochs=(1.875,)",
)
KILL_AT = {  # a killed run's name: where it was killed, and the checkpoints it left
    "epoch_end": ("run.epoch_end:2", [1, 2]),  # after checkpoint 2 and its checksum
    "saving": ("checkpoint.saving:2", [1, 2]),  # checkpoint 2 committed, its checksum not yet
    "saved_last": (f"checkpoint.saved:{EPOCHS}", [1, 2, 3]),  # before the summary and plots
}


def _start(workdir_, dataset, *extra, kill_at=None, epochs=EPOCHS, cache=None):
    env = dict(os.environ, CNNJAX_KILL_AT=kill_at or "")
    if cache:
        env.update(compile_cache_env(cache))
    return subprocess.Popen(
        train_command(dataset, workdir_, epochs, *SMALL, *extra),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=600)
    return process.returncode, out, err


@pytest.fixture(scope="module")
def runs(dataset, tmp_path_factory):
    """{"root", "whole" (the uninterrupted run's workdir), "second" (exit status and stderr of
    a process that tried to resume the whole run's workdir while it trained, and the pid of
    that first one), "resumed": name -> (exit status, stdout, stderr) of each resume,
    "diverged": the same of a run started with BLOW_UP}."""
    root = tmp_path_factory.mktemp("faults")
    cache = root / "jax_cache"
    whole = _start(root / "whole", dataset, cache=cache)
    diverging = _start(root / "diverged", dataset, *BLOW_UP, epochs=2, cache=cache)
    victims = {
        name: _start(root / name, dataset, kill_at=at, cache=cache)
        for name, (at, _) in KILL_AT.items()
    }
    deadline = time.monotonic() + 300
    while not (root / "whole" / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # the first process has claimed (locked) the workdir, and trains
    second = _finish(_start(root / "whole", dataset, "--resume"))
    status, out, err = _finish(whole)
    assert status == 0, out + err
    diverged = _finish(diverging)
    for name, process in victims.items():
        status, out, err = _finish(process)
        assert status == -signal.SIGKILL, f"{name}: {status}\n{out}{err}"
        assert checkpoints.saved_epochs(root / name) == KILL_AT[name][1]
        assert not (root / name / "summary.json").exists()
        assert (root / name / workdir.LOCK).exists()  # left by the killed process
    for damage, harm in DAMAGE.items():
        shutil.copytree(root / "epoch_end", root / damage)
        harm(root / damage / "checkpoints" / "2")
    resumes = {
        name: _start(root / name, dataset, "--resume", cache=cache) for name in (*KILL_AT, *DAMAGE)
    }
    resumed = {name: _finish(process) for name, process in resumes.items()}
    second = (*second[::2], whole.pid)
    return dict(root=root, whole=root / "whole", second=second, resumed=resumed, diverged=diverged)


def _ends_as_the_whole_run(name, runs) -> list[str]:
    """Check that the resumed run `name` ended as the uninterrupted run did; return the lines
    its resume wrote about checkpoints it passed over."""
    status, out, err = runs["resumed"][name]
    assert status == 0, out + err
    directory = runs["root"] / name
    want, got = _summary(runs["whole"]), _summary(directory)
    assert got["params_hash"] == want["params_hash"]
    assert (got["test_accuracy"], got["test_loss"]) == (want["test_accuracy"], want["test_loss"])
    assert _rows(directory) == _rows(runs["whole"])
    return [line for line in err.splitlines() if line.startswith("checkpoint ")]


@pytest.mark.parametrize("name", KILL_AT)
def test_a_killed_run_resumes_to_the_uninterrupted_run(runs, name):
    passed_over = _ends_as_the_whole_run(name, runs)  # and its lock was not stale
    if name == "saving":
        assert len(passed_over) == 1 and "has no readable" in passed_over[0]
        assert passed_over[0].endswith("did not finish); falling back to checkpoint 1")
        assert (runs["root"] / name / checkpoints.REJECTED / "2").is_dir()  # kept, not deleted
    else:
        assert passed_over == []


def _data_file(step_dir):
    return max((step_dir / "default" / "d").iterdir(), key=lambda p: p.stat().st_size)


def _flip(path):
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _unfinished_orbax_save(step_dir):
    """What a kill inside orbax's save of step 3 leaves: a part-written temporary directory
    (orbax renames it to 3/ only once complete)."""
    partial = step_dir.parent / "3.orbax-checkpoint-tmp-1700000000000000"
    shutil.copytree(step_dir / "default", partial / "default")
    shutil.rmtree(partial / "default" / "d")


DAMAGE = {  # done to checkpoint 2 of a copy of the run killed at "epoch_end"
    "flipped_byte": lambda step: _flip(_data_file(step)),
    "truncated_file": lambda step: _truncate(_data_file(step)),
    "unfinished_orbax_save": _unfinished_orbax_save,
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_checkpoint_falls_back_to_the_one_before(runs, damage):
    passed_over = _ends_as_the_whole_run(damage, runs)
    if damage == "unfinished_orbax_save":  # orbax lists only renamed (complete) steps
        assert passed_over == []
        return
    directory = runs["root"] / damage / "checkpoints"
    assert len(passed_over) == 1
    assert passed_over[0].startswith(f"checkpoint 2 in {directory} cannot be read")
    assert passed_over[0].endswith("; falling back to checkpoint 1")
    assert len(passed_over[0]) < 300  # one readable line, not orbax's traceback


def test_a_second_process_on_a_workdir_is_refused_in_one_line(runs):
    status, err, pid = runs["second"]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert status == 2 and len(errors) == 1, err
    assert f"is in use by process {pid} on " in errors[0]
    assert "Traceback" not in err
    # and the first ran on undisturbed: the uninterrupted run every other test compares with
    assert len({r["step"] for r in _rows(runs["whole"]) if r["kind"] == "step"}) == 8 * EPOCHS


def _rows(directory):
    rows = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def _summary(directory):
    return json.loads((directory / "summary.json").read_text())


def test_a_run_whose_test_loss_blows_up_exits_2_keeping_its_last_good_checkpoint(runs):
    status, out, err = runs["diverged"]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert status == 2 and len(errors) == 1, out + err
    assert "the test loss became" in errors[0] and "after epoch 2" in errors[0]
    assert "last good checkpoint (epoch 1) is kept" in errors[0]
    directory = runs["root"] / "diverged"
    assert checkpoints.saved_epochs(directory) == [1]
    assert (directory / "checkpoints" / "1" / checkpoints.CHECKSUM).exists()
    assert not (directory / "summary.json").exists()
