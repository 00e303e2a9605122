"""Checkpoints of a run or a population: DIR/checkpoints/<epochs done>/ (orbax), saved after
every epoch, restored into the caller's tree structure; and the params hash that says two
trainings ended bit-identical."""

from __future__ import annotations

import hashlib
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp


def params_hash(params) -> str:
    """sha256 over every parameter's bytes in tree order: equal hashes, bit-identical params."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        digest.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
    return digest.hexdigest()


def manager(directory: Path, keep: int = 3) -> ocp.CheckpointManager:
    """The checkpoints of `directory` (a run's or a population's), keeping the last `keep`;
    every save is complete when save() returns (no background writes)."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=False
    )
    return ocp.CheckpointManager((Path(directory) / "checkpoints").absolute(), options=options)


def save(checkpoints: ocp.CheckpointManager, epochs_done: int, state) -> None:
    """Checkpoint `state` (any pytree of arrays) as the one after `epochs_done` epochs."""
    checkpoints.save(epochs_done, args=ocp.args.StandardSave(state))


def restore(checkpoints: ocp.CheckpointManager, template):
    """(the last checkpoint's state, epochs it had finished), or (template, 0) if none. The
    state comes back in the template's tree structure (a TrainState, a Population, ...)."""
    epochs_done = checkpoints.latest_step()
    if epochs_done is None:
        return template, 0
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    state = checkpoints.restore(epochs_done, args=ocp.args.StandardRestore(abstract))
    return jax.tree.unflatten(jax.tree.structure(template), jax.tree.leaves(state)), epochs_done
