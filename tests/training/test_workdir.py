"""cnnjax.training.workdir: a directory is claimed new or resumed with the same record, never
overwritten, and locked against a second process (never stale after a kill); the record
carries the environment; the metrics writer of a resumed run."""

import fcntl
import json
import signal
import subprocess
import sys

import pytest

from cnnjax.output import jsonl
from cnnjax.training import RunError, workdir
from configs import smoke
from tests.builders import REPO


def test_a_new_directory_gets_the_record_and_the_environment(tmp_path):
    workdir.claim(tmp_path / "run", {"seed": 0}, resume=False)
    written = json.loads((tmp_path / "run" / workdir.CONFIG).read_text())
    assert written["seed"] == 0 and written[workdir.ENVIRONMENT]["versions"]["jax"]
    assert workdir.recorded(tmp_path / "run" / workdir.CONFIG) == {"seed": 0}


def test_a_directory_that_holds_something_is_never_overwritten(tmp_path):
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="already holds a sweep; pass --resume"):
        workdir.claim(tmp_path / "sweep", {}, resume=False, name="sweep.json", kind="sweep")
    assert [p.name for p in (tmp_path / "sweep").iterdir()] == ["notes.txt"]


def test_resuming_needs_the_same_record(tmp_path):
    with pytest.raises(RunError, match=r"nothing to resume .* no sweep\.json"):
        workdir.claim(tmp_path / "s", {"a": 1}, resume=True, name="sweep.json", kind="sweep")
    workdir.claim(tmp_path / "s", {"a": 1}, resume=False, name="sweep.json", kind="sweep")
    before = (tmp_path / "s" / "sweep.json").read_text()
    workdir.claim(tmp_path / "s", {"a": 1}, resume=True, name="sweep.json", kind="sweep")
    same = "config, sweep and --shard"
    with pytest.raises(RunError, match=f"holds another sweep .* same {same}"):
        workdir.claim(
            tmp_path / "s", {"a": 2}, resume=True, name="sweep.json", kind="sweep", same=same
        )
    assert (tmp_path / "s" / "sweep.json").read_text() == before


def test_a_run_records_its_resolved_config_and_loads_it_back(tmp_path):
    config = smoke.get_config()
    workdir.claim_run(tmp_path / "run", config, resume=False)
    assert workdir.load_config(tmp_path / "run").to_dict() == json.loads(config.to_json())
    with pytest.raises(RunError, match="not a run directory"):
        workdir.load_config(tmp_path / "elsewhere")


def test_a_resumed_writer_drops_the_rows_past_the_checkpoint(tmp_path):
    with workdir.metrics_writer(tmp_path, None) as writer:
        for step in (1, 2, 3, 4):
            writer.write(kind="step", step=step, loss=1.0 / step)
    with workdir.metrics_writer(tmp_path, resume_step=2) as writer:
        writer.write(kind="step", step=3, loss=0.5)
    rows = jsonl.read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 0.5), (3, 0.5)]


def _holds_lock(directory) -> bool:
    """Whether some open file holds the directory's lock (an flock from a fresh open file
    conflicts with any other, in this process or another)."""
    with open(directory / workdir.LOCK) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def test_a_claimed_directory_is_locked_until_released_and_others_are_refused(tmp_path):
    workdir.claim(tmp_path / "run", {"seed": 0}, resume=False)
    assert _holds_lock(tmp_path / "run")
    workdir.claim(tmp_path / "run", {"seed": 0}, resume=True)  # this process again: fine
    workdir.release(tmp_path / "run")
    assert not _holds_lock(tmp_path / "run")
    with open(tmp_path / "run" / workdir.LOCK) as other:  # as another process would hold it
        fcntl.flock(other, fcntl.LOCK_EX)
        before = (tmp_path / "run" / workdir.CONFIG).read_bytes()
        with pytest.raises(RunError, match=r"run is in use by process \d+ on .*choose another"):
            workdir.claim(tmp_path / "run", {"seed": 0}, resume=True)
        with pytest.raises(RunError, match="already holds a run"):
            workdir.claim(tmp_path / "run", {"seed": 0}, resume=False)
    assert (tmp_path / "run" / workdir.CONFIG).read_bytes() == before


def test_a_killed_process_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_AND_WAIT, str(tmp_path / "run")],
        cwd=REPO,
        stdout=subprocess.PIPE,
    )
    assert holder.stdout.readline() == b"locked\n"
    with pytest.raises(RunError, match=f"in use by process {holder.pid} "):
        workdir.claim(tmp_path / "run", {"seed": 0}, resume=True)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    workdir.claim(tmp_path / "run", {"seed": 0}, resume=True)
    assert _holds_lock(tmp_path / "run")
    workdir.release(tmp_path / "run")


LOCK_AND_WAIT = """
import sys, time
from cnnjax.training import workdir
workdir.claim(sys.argv[1], {"seed": 0}, resume=False)
print("locked", flush=True)
time.sleep(600)
"""
