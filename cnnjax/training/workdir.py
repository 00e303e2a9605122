"""A run's or a sweep's directory: claimed new or resumed, never overwritten; the JSON record
it was started with (a run's config.json, a sweep's sweep.json), which also records under
ENVIRONMENT what it started on; the metrics file a resumed run goes on writing.

A claimed directory is locked (LOCK, an flock the kernel releases when the process ends, even
by SIGKILL, so it is never stale) until release() or the process's end: a second process
claiming it is refused. Every process checks (they see the same files, so they fail alike);
process 0 alone locks and writes.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path

import ml_collections

from cnnjax import parallel, runtime
from cnnjax.output import events, jsonl
from cnnjax.training import RunError

ENVIRONMENT = "environment"  # the record's account of what it ran on: runtime.environment()
CONFIG = "config.json"  # a run's record: its resolved config
LOCK = ".lock"  # flock'ed by the process that claimed the directory; holds its pid and host

_held: dict[Path, int] = {}  # directory -> the open LOCK file this process holds locked


def recorded(path: Path) -> dict:
    """The JSON record at `path`, less its ENVIRONMENT."""
    record = json.loads(Path(path).read_text())
    return {key: value for key, value in record.items() if key != ENVIRONMENT}


def claim(
    directory,
    record: dict,
    *,
    resume: bool,
    name: str = CONFIG,
    kind: str = "run",
    same: str = "config and overrides",
) -> None:
    """Start `directory` with `record` in its file `name` (plus ENVIRONMENT), refusing one that
    already holds something; or, resuming, check that it was started with this same record.
    `kind` ("run", "sweep") and `same` (what a resume must repeat) word the errors. Process 0
    holds the directory's lock from here on (see the module docstring)."""
    directory = Path(directory)
    _check(directory, record, resume, name, kind, same)
    parallel.barrier("cnnjax.training.workdir: checked")  # before process 0 makes it non-empty
    if parallel.is_primary():
        lock(directory)
        try:  # again, as found under the lock: another process may have just written it
            _check(directory, record, resume, name, kind, same)
        except RunError:
            release(directory)
            raise
        if not resume:
            written = {**record, ENVIRONMENT: runtime.environment()}
            (directory / name).write_text(json.dumps(written, indent=2, sort_keys=True) + "\n")


def _check(directory: Path, record: dict, resume: bool, name: str, kind: str, same: str):
    path = directory / name
    if resume:
        if not path.exists():
            raise RunError(f"nothing to resume in {directory}: it has no {name}")
        if recorded(path) != record:
            older = sorted(set(_leaves(record)) - set(_leaves(recorded(path))))
            if older:
                raise RunError(
                    f"{directory} holds a {kind} started by an older cnnjax (its {name} has no "
                    f"{', '.join(older)}), which this version cannot resume: start the {kind} "
                    "again in a new --workdir (nothing was changed)"
                )
            raise RunError(
                f"{directory} holds another {kind} (see {path}), started with another config; "
                f"resume it with the same {same}, or start a new {kind} in a new --workdir"
            )
        return
    if directory.exists() and any(p.name != LOCK for p in directory.iterdir()):
        raise RunError(
            f"{directory} already holds a {kind}; pass --resume to continue it, or choose a new "
            "--workdir (nothing was changed)"
        )


def _leaves(record, prefix: str = "") -> list[str]:
    """Every leaf field of a nested JSON record, as "section.name"."""
    if not isinstance(record, dict):
        return [prefix.rstrip(".")]
    return [leaf for key, value in record.items() for leaf in _leaves(value, f"{prefix}{key}.")]


def lock(directory) -> None:
    """Lock `directory` (made if need be) for this process until release() or its end; a
    RunError if another process holds it. Locking one again is a no-op."""
    directory = Path(directory)
    key = directory.resolve()
    if key in _held:
        return
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RunError(
            f"{directory} is in use by {holder}; wait for it to end, or choose another "
            "--workdir (nothing was changed)"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode())
    _held[key] = fd


def release(directory) -> None:
    """Unlock a directory this process locked (nothing if it holds no lock on it)."""
    fd = _held.pop(Path(directory).resolve(), None)
    if fd is not None:
        os.close(fd)


def claim_run(workdir, config, *, resume: bool) -> None:
    """claim() for a run: its record is the resolved config."""
    claim(workdir, json.loads(config.to_json_best_effort()), resume=resume)


def load_config(workdir) -> ml_collections.ConfigDict:
    """The resolved config a run was started with (its config.json less ENVIRONMENT)."""
    path = Path(workdir) / CONFIG
    if not path.exists():
        raise RunError(f"{workdir} is not a run directory: it has no {CONFIG}")
    return ml_collections.ConfigDict(recorded(path))


def metrics_writer(workdir, resume_step: int | None) -> jsonl.MetricsWriter:
    """Process 0's writer of workdir/metrics.jsonl, after dropping the rows past resume_step
    (what a killed run logged after its checkpoint), each row mirrored to TensorBoard in
    workdir/tensorboard/ (cnnjax.output.events); elsewhere a writer to /dev/null."""
    if not parallel.is_primary():
        return jsonl.MetricsWriter(os.devnull)
    if resume_step is not None:
        jsonl.truncate_after(Path(workdir) / "metrics.jsonl", resume_step)
    mirror = events.Events(Path(workdir) / "tensorboard", resume_step)
    return jsonl.MetricsWriter(Path(workdir) / "metrics.jsonl", events=mirror)
