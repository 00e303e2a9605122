"""The entry points' errors, in real processes: a mistake a person can fix ends with exit status
2 and one line on stderr, "error: ..." naming the flag or field or file (and the fix), before
anything is written; --debug adds the traceback; --help exits 0. A full disk while a checkpoint
is saved leaves the earlier checkpoints as they were, and --resume finishes the run."""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from absl import flags

import experiments
from cnnjax.training import RunError, checkpoints, idx
from tests.builders import REPO, train_command

# Runs `python -m MODULE ARGS...` with the sha256 table of the fake MNIST files in place of the
# official one (as data.load's checksums= does), so that a corrupted file is caught by what was
# done to it, not by being fake.
WITH_CHECKSUMS = """
import json, runpy, sys
from cnnjax.training import idx
idx.Mnist.SHA256 = json.loads(sys.argv[1])
sys.argv = sys.argv[2:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def _start(command, env=None) -> subprocess.Popen:
    env = {**os.environ, "CNNJAX_DEBUG": "", **(env or {})}
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _run_all(commands: dict) -> dict:
    """name -> command, run side by side -> name -> (exit status, stdout, stderr lines)."""
    started = {name: _start(command) for name, command in commands.items()}
    done = {}
    for name, process in started.items():
        out, err = process.communicate(timeout=600)
        done[name] = (process.returncode, out, err.splitlines())
    return done


# What else a run may have written to stderr before it stopped: its progress lines.
PROGRESS = re.compile(r"^(epoch \d+/\d+|population \d+/\d+|preparing \w+ from) ")


def _assert_one_error_line(name, result, *expected):
    """Exit status 2, and stderr is the run's progress lines (if any) then one error line."""
    status, _, lines = result
    assert status == 2, (name, status, lines[-20:])
    *before, last = lines or [""]
    assert last.startswith("error: "), (name, lines[-20:])
    assert all(PROGRESS.match(line) for line in before), (name, lines[-20:])
    for text in expected:
        assert text in last, (name, text, last)


def _module(name, *args):
    return [sys.executable, "-m", name, *args]


def test_flag_and_config_mistakes_stop_with_one_line_before_anything_is_written(dataset, tmp_path):
    workdir = tmp_path / "run"
    train = train_command(dataset, workdir, 1)
    cases = {  # name -> (extra flags, what the line must name)
        "misspelt": (["--config.optim.learnig_rate=0.1"], ["did you mean --config.optim.learn"]),
        "mistyped": (["--config.train.batch_size=many"], ["--config.train.batch_size=many"]),
        "twice": (["--config.train.epochs=2"], ["--config.train.epochs is given twice"]),
        "batch": (["--config.train.batch_size=-32"], ["--config.train.batch_size=", "-32"]),
        "eval batch": (["--config.train.eval_batch_size=0"], ["--config.train.eval_batch_size="]),
        "chunk": (["--config.train.steps_per_chunk=0"], ["--config.train.steps_per_chunk="]),
        "kept": (["--config.train.checkpoints_kept=0"], ["--config.train.checkpoints_kept="]),
        "stray": (["stray"], ["unexpected arguments ['stray']"]),
    }
    commands = {name: train + extra for name, (extra, _) in cases.items()}
    commands["epochs"] = train_command(dataset, workdir, 0)
    commands["source"] = train_command((tmp_path / "none", dataset[1]), workdir, 1)
    commands["no config"] = _module(
        "experiments.train", "--config=configs/nope.py", f"--workdir={workdir}"
    )
    commands["spaced"] = _module(  # --config FILE, as a separate argument
        "experiments.train",
        "--config",
        "configs/smoke.py",
        f"--workdir={workdir}",
        "--config.optim.learnig_rate=0.1",
    )
    commands["default config"] = _module(  # the default file, read as the flags are parsed
        "experiments.gradcheck", "--config.num_random_spec=1"
    )
    commands["jobs"] = _module("experiments.gradcheck", "--jobs=0")
    commands["ensemble"] = _module("experiments.evaluate", "--ensemble", f"--workdir={workdir}")
    commands["not a sweep"] = _module(
        "experiments.evaluate",
        "--ensemble",
        "--config=configs/mnist_seeds.py",
        f"--workdir={tmp_path}",
    )
    results = _run_all(commands)
    for name, (_, expected) in cases.items():
        _assert_one_error_line(name, results[name], *expected)
    _assert_one_error_line("epochs", results["epochs"], "--config.train.epochs=", ">= 1, got 0")
    _assert_one_error_line("source", results["source"], "--config.data.source_dir=DIR")
    _assert_one_error_line("no config", results["no config"], "--config=configs/nope.py: no such")
    _assert_one_error_line("spaced", results["spaced"], "did you mean --config.optim.learning_rate")
    _assert_one_error_line(
        "default config", results["default config"], "did you mean --config.num_random_specs?"
    )
    _assert_one_error_line("jobs", results["jobs"], "--jobs must be at least 1, got 0")
    _assert_one_error_line("ensemble", results["ensemble"], "--ensemble needs --config")
    _assert_one_error_line("not a sweep", results["not a sweep"], "holds no sweep.json")
    assert not workdir.exists()


def test_help_exits_0_and_debug_shows_the_traceback(dataset, tmp_path):
    results = _run_all(
        {
            "help": _module("experiments.train", "--help"),
            "debug": [*train_command(dataset, tmp_path / "run", -1), "--debug"],
        }
    )
    status, out, _ = results["help"]
    assert status == 0 and "--workdir" in out and "--[no]debug" in out
    status, _, lines = results["debug"]
    assert status == 2 and lines[0] == "Traceback (most recent call last):", lines
    assert "RunError" in lines[-2] and lines[-1].startswith("error: config.train.epochs")
    assert not (tmp_path / "run").exists()


def test_a_bad_idx_file_names_the_file_and_the_flag_and_nothing_is_written(dataset, tmp_path):
    source, _ = dataset
    checksums = {
        path.name.removesuffix(".gz"): hashlib.sha256(
            gzip.decompress(path.read_bytes())
        ).hexdigest()
        for path in source.glob("*.gz")
    }
    stem = "t10k-labels-idx1-ubyte"
    raw = gzip.decompress((source / f"{stem}.gz").read_bytes())
    flipped = bytearray(raw)
    flipped[-1] ^= 1  # one bit of the last label: same size, valid header
    corruptions = {
        "truncated": (gzip.compress(raw[:-10]), ["truncated", "needs 208 bytes, but it has 198"]),
        "flipped": (gzip.compress(bytes(flipped)), ["checksum mismatch", checksums[stem]]),
        "missing": (None, [f"neither {stem}.gz nor {stem} is in"]),
    }
    commands = {}
    for name, (content, _) in corruptions.items():
        copy = tmp_path / name / "idx"
        shutil.copytree(source, copy)
        if content is None:
            (copy / f"{stem}.gz").unlink()
        else:
            (copy / f"{stem}.gz").write_bytes(content)
        train = train_command((copy, tmp_path / name / "tfds"), tmp_path / name / "run", 1)
        commands[name] = [sys.executable, "-c", WITH_CHECKSUMS, json.dumps(checksums), *train[2:]]
    results = _run_all(commands)
    for name, (_, expected) in corruptions.items():
        _assert_one_error_line(name, results[name], *expected, "--config.data.source_dir=DIR")
        if name != "missing":
            assert f"{tmp_path / name / 'idx' / stem}.gz" in results[name][2][0]
        assert not (tmp_path / name / "run").exists()


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="no /sys: Linux's read-only sysfs")
def test_a_workdir_that_cannot_be_written_says_so_in_one_line(dataset):
    # sysfs refuses a new directory to everyone, root included (a chmod would not stop root)
    workdir = "/sys/cnnjax-test/run"
    status, out, lines = _run_all({"ro": train_command(dataset, workdir, 1)})["ro"]
    _assert_one_error_line("ro", (status, out, lines), "cannot write /sys/cnnjax-test", "--workdir")


@pytest.mark.slow
def test_a_disk_full_while_checkpointing_keeps_the_saved_checkpoints_and_resume_finishes(
    dataset, tmp_path
):
    """A real write failure: once checkpoint 1 is saved, the running process's file-size limit
    (RLIMIT_FSIZE, lowered from outside with prlimit, as any user may) is set below a
    checkpoint's size, so that saving the next one fails (EFBIG, as ENOSPC would)."""
    workdir = tmp_path / "run"
    command = train_command(dataset, workdir, 3)
    process = _start(command)
    deadline = time.monotonic() + 300
    complete = workdir / "checkpoints" / "1" / checkpoints.CHECKSUM  # written last, renamed
    while not complete.exists() and process.poll() is None:
        assert time.monotonic() < deadline, "checkpoint 1 never appeared"
        time.sleep(0.005)
    resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
    saved = _files(workdir / "checkpoints")  # orbax renames a checkpoint into place when whole
    config = (workdir / "config.json").read_bytes()
    out, err = process.communicate(timeout=600)
    _assert_one_error_line(
        "full", (process.returncode, out, err.splitlines()), "File too large", "--resume"
    )
    finished = [name for name in saved if name.split("/")[0].isdigit()]
    assert finished and {name: _files(workdir / "checkpoints")[name] for name in finished} == {
        name: saved[name] for name in finished
    }
    assert (workdir / "config.json").read_bytes() == config
    status, out, err = _run_all({"resume": [*command, "--resume"]})["resume"]
    assert status == 0, err[-20:]
    assert json.loads((workdir / "summary.json").read_text())["epochs"] == 3


def _files(directory: Path) -> dict:
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


# --- the one line, in-process: errors as the libraries underneath raise them -----------------


@pytest.fixture
def parsed_flags(tmp_path):
    """experiments' flags parsed, --workdir (train's flag, defined here) under tmp_path."""
    if "workdir" not in flags.FLAGS:
        flags.DEFINE_string("workdir", None, "the run directory")
    flags.FLAGS(["test", f"--workdir={tmp_path / 'run'}"])
    yield tmp_path / "run"
    flags.FLAGS.unparse_flags()


def test_explain_finds_the_os_error_under_the_wrappers(parsed_flags):
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(parsed_flags / "metrics.jsonl"))
    try:
        try:
            raise full
        except OSError as cause:
            raise RuntimeError("a library's own error") from cause
    except RuntimeError as wrapped:
        line = experiments.explain(wrapped)
    assert line.startswith(f"writing {parsed_flags / 'metrics.jsonl'} failed: No space left")
    tensorstore = ValueError(  # what orbax raises, as text
        f'OUT_OF_RANGE: Error writing "step" in OCDBT database at local file "{parsed_flags}/'
        f'checkpoints/2.orbax-checkpoint-tmp-5/default/": Failed to write 8 bytes to file 15: '
        "No space left on device [os_error_code='28']"
    )
    assert experiments.explain(tensorstore).startswith(
        f"saving checkpoint {parsed_flags}/checkpoints/2 failed: No space left on device;"
    )
    readonly = OSError(errno.EROFS, os.strerror(errno.EROFS), str(parsed_flags.parent))
    assert experiments.explain(readonly).endswith("pass a writable --workdir")
    assert experiments.explain(RunError("what\nand why")) == "what and why"
    assert experiments.explain(ValueError("a bug")) is None  # keeps its traceback
    assert experiments.explain(ConnectionError(errno.ECONNREFUSED, "refused")) is None
    assert experiments.explain(idx.CorruptFile("x: truncated")) == "x: truncated"


def test_a_closed_event_loops_ignored_exception_is_not_printed_among_a_runs_lines(monkeypatch):
    # Python reports an exception raised where nothing can catch it (an asyncio callback of the
    # checkpointing library after its loop closed) through sys.unraisablehook; the entry points'
    # hook drops that one report and passes every other to Python's own.
    reported = []
    monkeypatch.setattr(sys, "__unraisablehook__", reported.append)
    monkeypatch.delenv("CNNJAX_DEBUG", raising=False)

    def unraisable(exc):
        return types.SimpleNamespace(
            exc_type=type(exc), exc_value=exc, exc_traceback=None, err_msg=None, object=None
        )

    experiments._unraisable(unraisable(RuntimeError("Event loop is closed")))
    assert reported == []
    other = unraisable(RuntimeError("something else"))
    experiments._unraisable(other)
    assert reported == [other]
