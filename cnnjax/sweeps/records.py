"""What a sweep directory records of its stages (cnnjax.sweeps.sweep): plan.json (each stage's
populations), stages.json (each stage as planned, checked again on resume) and a shard's
stages/<s>.json (its members' rows at the end of stage s), which the other shards of a staged or
tpe sweep wait for."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from cnnjax import faults
from cnnjax.output import jsonl
from cnnjax.sweeps import grid, stages
from cnnjax.sweeps.grid import SweepError


def read_plan(directory: Path) -> list[list[list[int]]]:
    """plan.json's populations, a list per stage ([] before the first is planned); an older
    version's one stage of populations, unnested, reads as that one stage."""
    path = Path(directory) / "plan.json"
    planned = json.loads(path.read_text()) if path.exists() else []
    if planned and planned[0] and isinstance(planned[0][0], int):
        planned = [planned]
    return planned


def read_stage(path: Path) -> dict[int, dict]:
    """A shard's stages/<s>.json: member -> its row at the end of stage s."""
    return {int(m): row for m, row in json.loads(path.read_text()).items()}


def record(directory: Path, s: int, stage: stages.Stage) -> None:
    """stages.json: every stage planned so far (its epochs, members, overrides and sources). A
    resumed sweep plans each again and must get the same: else its sampler or ranking is not
    the one that started it (another Optuna or NumPy), and going on would mix two sweeps."""
    path = directory / "stages.json"
    recorded = json.loads(path.read_text()) if path.exists() else []
    planned = json.loads(json.dumps(stage.to_json()))
    if s < len(recorded):
        before = recorded[s]
        names = sorted(set(planned["members"]) | set(before["members"]), key=int)
        changed = [m for m in names if before["members"].get(m) != planned["members"].get(m)]
        if changed or before["epochs"] != planned["epochs"]:
            what = (
                f"{planned['members'].get(changed[0])} for member {changed[0]}, where {path} "
                f"records {before['members'].get(changed[0])}"
                if changed
                else f"epochs {planned['epochs']}, where {path} records {before['epochs']}"
            )
            raise SweepError(
                f"stage {s} now plans {what}: resume with the versions it started with (its "
                "sweep.json's environment), or start a new --workdir"
            )
        return
    jsonl.write_json(path, [*recorded, planned])
    faults.point("sweep.stage")


def every_shard(sweep_dir, shard, s: int, stage, mine: dict, options) -> dict[int, dict]:
    """Stage s's rows of every shard's members: this shard's, and each other's once its
    stages/<s>.json appears (shards share the sweep directory's file system), waiting up to
    config.sweep.wait_minutes for it."""
    rows = dict(mine)
    i, n = shard
    deadline = time.monotonic() + 60 * options["wait_minutes"]
    for j in (j for j in range(n) if j != i):
        path = grid.shard_dir(sweep_dir, (j, n)) / "stages" / f"{s}.json"
        told = False
        while not path.exists():
            if time.monotonic() > deadline:
                raise SweepError(
                    f"shard {j}/{n} has not finished stage {s} ({path}) within "
                    f"config.sweep.wait_minutes={options['wait_minutes']}: start it (the "
                    "shards of a staged or tpe sweep run at once), then rerun this with --resume"
                )
            if not told:
                print(f"waiting for shard {j}/{n} to finish stage {s} ({path})", file=sys.stderr)
                told = True
            time.sleep(2.0)
        rows.update(read_stage(path))
    if sorted(rows) != sorted(stage.members):
        raise SweepError(
            f"stage {s}'s rows in the shards of {sweep_dir} are for members {sorted(rows)}, not "
            f"the stage's {stage.members}: a shard is from another sweep"
        )
    return rows
