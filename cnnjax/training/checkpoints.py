"""Checkpoints of a run or a population: DIR/checkpoints/<epochs done>/ (orbax), saved after
every epoch, verified and restored into the caller's tree structure; and the params hash that
says two trainings ended bit-identical.

Each checkpoint carries CHECKSUM, the sha256 of every leaf of its state (params, optimizer
state, step, keys), written atomically once orbax has committed the step: a step without it
did not finish saving. restore() takes the newest checkpoint that reads back and matches its
checksum, saying in one line (on stderr) why it passed over each newer one. save() moves such
passed-over steps to DIR/rejected_checkpoints/ before saving over their step numbers, so nothing
written is lost. A checkpoint an older cnnjax wrote, its state lacking fields the template has
(a TrainState's model_state and dropout_key), is not passed over but refused: a RunError.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from cnnjax import faults, parallel
from cnnjax.output import jsonl
from cnnjax.training import RunError

CHECKSUM = "cnnjax_checksum.json"  # in each step directory: {"sha256": state_hash}
REJECTED = "rejected_checkpoints"  # beside checkpoints/: the steps a resumed run passed over


def params_hash(params) -> str:
    """sha256 over every parameter's bytes in tree order: equal hashes, bit-identical params.
    Works on any pytree of arrays (a whole state: the checkpoints' checksum)."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        digest.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
    return digest.hexdigest()


def manager(directory: Path, keep: int = 3) -> ocp.CheckpointManager:
    """The checkpoints of `directory` (a run's or a population's), keeping the last `keep`
    (at least 1); every save is complete when save() returns (no background writes)."""
    if keep < 1:  # orbax reads 0 as "keep all", a run would keep none: neither is meant
        raise ValueError(f"a run keeps at least 1 checkpoint, got keep={keep}")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=False
    )
    return ocp.CheckpointManager((Path(directory) / "checkpoints").absolute(), options=options)


def save(checkpoints: ocp.CheckpointManager, epochs_done: int, state) -> None:
    """Checkpoint `state` (any pytree of arrays) as the one after `epochs_done` epochs, with
    its checksum. Steps >= epochs_done already there (ones restore passed over) are first moved
    to REJECTED: orbax would refuse the step, or silently skip saving below a later one."""
    root = Path(checkpoints.directory)
    later = [step for step in checkpoints.all_steps() if step >= epochs_done]
    if later:
        if parallel.is_primary():
            for step in later:
                _set_aside(root / str(step))
        parallel.barrier("cnnjax.training.checkpoints: set aside")
        checkpoints.reload()
    checksum = params_hash(state)
    with _stderr_held():
        saved = checkpoints.save(epochs_done, args=ocp.args.StandardSave(state))
    if not saved:
        raise RuntimeError(f"orbax did not save step {epochs_done} in {root}")
    faults.point("checkpoint.saving")  # committed by orbax, not yet checksummed
    if parallel.is_primary():
        jsonl.write_json(root / str(epochs_done) / CHECKSUM, {"sha256": checksum})
    faults.point("checkpoint.saved")


@contextlib.contextmanager
def _stderr_held():
    """What is written to stderr (file descriptor 2: Python, C++ and every thread) meanwhile is
    held back and written out at the end, or, if the block raises, attached to its error as a
    note (shown with its traceback) instead: a failed save (a full disk) is reported once, by
    the error, not first by orbax's threads logging the same failure at length."""
    sys.stderr.flush()
    with tempfile.TemporaryFile() as held:
        real = os.dup(2)
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException as error:
            sys.stderr.flush()
            held.seek(0)
            text = held.read().decode(errors="replace").strip()
            if text:
                error.add_note(f"stderr while saving:\n{text}")
            raise
        finally:
            sys.stderr.flush()
            os.dup2(real, 2)
            os.close(real)
        held.seek(0)
        os.write(2, held.read())


def restore(checkpoints: ocp.CheckpointManager, template):
    """(the newest good checkpoint's state, epochs it had finished), or (template, 0) if none
    is good. Good: it reads back and matches its checksum; each newer one is passed over with
    one line on stderr. The state comes back in the template's tree structure (a TrainState,
    a Population, ...)."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    steps = sorted(checkpoints.all_steps(), reverse=True)
    for i, step in enumerate(steps):
        state, problem = _read(checkpoints, step, abstract)
        if problem is not None and (lacking := _lacking(checkpoints, step, template)):
            raise RunError(
                f"checkpoint {step} in {checkpoints.directory} was written by an older cnnjax "
                f"(its state has no {', '.join(lacking)}), which this version cannot resume: "
                "start the run again in a new --workdir (nothing was changed)"
            )
        if problem is None:
            return jax.tree.unflatten(jax.tree.structure(template), jax.tree.leaves(state)), step
        then = (
            f"falling back to checkpoint {steps[i + 1]}"
            if i + 1 < len(steps)
            else ("no earlier checkpoint is left, so it starts from epoch 0")
        )
        _say(f"checkpoint {step} in {checkpoints.directory} {problem}; {then}")
    return template, 0


def saved_epochs(directory) -> list[int]:
    """The epochs done of the checkpoints orbax committed in `directory` (a run's), oldest
    first, without reading or verifying them."""
    root = Path(directory) / "checkpoints"
    names = [p.name for p in root.iterdir()] if root.is_dir() else []
    return sorted(int(name) for name in names if name.isdigit())


def _read(checkpoints, step: int, abstract):
    """(state, None) if checkpoint `step` reads back and matches its checksum, else (None,
    what is wrong with it)."""
    path = Path(checkpoints.directory) / str(step) / CHECKSUM
    try:
        recorded = json.loads(path.read_text())["sha256"]
    except (OSError, ValueError, KeyError):
        return None, f"has no readable {CHECKSUM} (its save did not finish)"
    try:
        state = checkpoints.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as error:  # orbax and tensorstore raise many kinds for a bad file
        reason = str(error).strip().splitlines()
        return None, f"cannot be read ({type(error).__name__}: {reason[0][:120] if reason else ''})"
    if params_hash(state) != recorded:
        return None, f"does not match its checksum (a file in it changed: see {path.parent})"
    return state, None


def _lacking(checkpoints, step: int, template) -> list[str]:
    """The fields of the template's NamedTuples (a TrainState, a Population's) that checkpoint
    `step` does not hold, by dotted name: orbax keeps a NamedTuple as a dict by field name."""
    try:
        stored = checkpoints.item_metadata(step)
    except Exception:  # unreadable metadata: the checkpoint is damaged, not older
        return []
    return _missing_fields(getattr(stored, "tree", stored), template, "")


def _missing_fields(stored, template, prefix: str) -> list[str]:
    if not (isinstance(template, tuple) and hasattr(template, "_fields")):
        return []
    if not isinstance(stored, dict):
        return []
    missing = []
    for field, value in zip(template._fields, template, strict=True):
        if field in stored:
            missing += _missing_fields(stored[field], value, f"{prefix}{field}.")
        else:
            missing.append(f"{prefix}{field}")
    return missing


def _set_aside(step_dir: Path) -> None:
    """Move a passed-over checkpoint to REJECTED (a new name if one is there already)."""
    rejected = step_dir.parent.parent / REJECTED
    rejected.mkdir(exist_ok=True)
    target, n = rejected / step_dir.name, 1
    while target.exists():
        target, n = rejected / f"{step_dir.name}.{n}", n + 1
    shutil.move(step_dir, target)


def _say(line: str) -> None:
    if parallel.is_primary():
        print(line, file=sys.stderr, flush=True)
