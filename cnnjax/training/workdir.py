"""A run's or a sweep's directory: claimed new or resumed, never overwritten; the JSON record
it was started with (a run's config.json, a sweep's sweep.json), which also records under
ENVIRONMENT what it started on; the metrics file a resumed run goes on writing.

Every process checks (they see the same files, so they fail alike); process 0 alone writes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import ml_collections

from cnnjax import parallel, runtime
from cnnjax.output import jsonl
from cnnjax.training import RunError

ENVIRONMENT = "environment"  # the record's account of what it ran on: runtime.environment()
CONFIG = "config.json"  # a run's record: its resolved config


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
    `kind` ("run", "sweep") and `same` (what a resume must repeat) word the errors."""
    directory = Path(directory)
    path = directory / name
    if resume:
        if not path.exists():
            raise RunError(f"nothing to resume in {directory}: it has no {name}")
        if recorded(path) != record:
            raise RunError(
                f"{directory} holds another {kind} (see {path}), started with another config; "
                f"resume it with the same {same}, or start a new {kind} in a new --workdir"
            )
        return
    if directory.exists() and any(directory.iterdir()):
        raise RunError(
            f"{directory} already holds a {kind}; pass --resume to continue it, or choose a new "
            "--workdir (nothing was changed)"
        )
    parallel.barrier("cnnjax.training.workdir: checked")  # before process 0 makes it non-empty
    if parallel.is_primary():
        directory.mkdir(parents=True, exist_ok=True)
        written = {**record, ENVIRONMENT: runtime.environment()}
        path.write_text(json.dumps(written, indent=2, sort_keys=True) + "\n")


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
    (what a killed run logged after its checkpoint); elsewhere a writer to /dev/null."""
    if not parallel.is_primary():
        return jsonl.MetricsWriter(os.devnull)
    if resume_step is not None:
        jsonl.truncate_after(Path(workdir) / "metrics.jsonl", resume_step)
    return jsonl.MetricsWriter(Path(workdir) / "metrics.jsonl")
