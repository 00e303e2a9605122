"""A finished sweep's members as one ensemble: each member's last checkpoint evaluated on the test
split, and the ensemble's prediction, the mean over the members of their predicted class
probabilities (softmax of each member's logits, test-time flips as its config says).

    mean_probability[n, k] = (1 / M) sum_m softmax(logits_m[n])[k]
    prediction[n] = argmax_k mean_probability[n, k],  loss = mean_n -log mean_probability[n, y_n]

The members are the rows of the sweep's results.jsonl; where each was checkpointed (its
population's directory and its index there) comes from the stage file of the stage it ended
at. Members that diverged are left out and named. Every member must have the same test split.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import numpy as np

from cnnjax import parallel
from cnnjax.output import tables
from cnnjax.sweeps import grid, population, records, results
from cnnjax.sweeps.grid import SweepError
from cnnjax.training import run, settings, train


@functools.partial(jax.jit, static_argnames=("spec", "dtype", "flip"))
def _probabilities(params, x_BHWC, *, spec, dtype, model_state, flip):
    logits = train.eval_logits(
        params, x_BHWC, spec=spec, dtype=dtype, model_state=model_state, flip=flip
    )
    return jax.nn.softmax(logits, axis=-1)


def member_probabilities(state, config, images, batch_size: int = 1000) -> np.ndarray:
    """A member's predicted class probabilities (N, K) for uint8 images, in eval mode."""
    spec = settings.spec(config)
    kw = dict(spec=spec, dtype=config.train.compute_dtype, flip=config.train.eval_flip)
    parts = [
        np.asarray(
            _probabilities(
                state.params, images[i : i + batch_size], model_state=state.model_state, **kw
            )
        )
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(parts)


def combine(probabilities_MNK: np.ndarray, labels_N: np.ndarray) -> dict:
    """The ensemble of M members' probabilities: its accuracy and loss (module docstring)."""
    mean_NK = np.mean(probabilities_MNK, axis=0, dtype=np.float64)
    chosen = mean_NK[np.arange(len(labels_N)), labels_N]
    return dict(
        accuracy=float(np.mean(np.argmax(mean_NK, axis=-1) == labels_N)),
        loss=float(np.mean(-np.log(np.maximum(chosen, np.finfo(np.float64).tiny)))),
    )


def _rows(directory: Path) -> list[dict]:
    """The results rows, each with where its member's last checkpoint is: "directory" (its
    population's, relative to the sweep) and "index" (its place there), from the stage files
    (stages/<s>.json, a shard's under shard-i/) of the stage the member ended at."""
    rows, conflicts = results.by_member(results.read_rows(directory / "results.jsonl"))
    if conflicts or not rows:
        why = f"members {conflicts} have conflicting rows" if conflicts else "no member rows"
        raise SweepError(
            f"{directory / 'results.jsonl'}: {why}; finish the sweep (python -m "
            "experiments.sweep ... --resume) before evaluating its ensemble"
        )
    where: dict[int, dict] = {}
    for path in sorted(directory.glob("**/stages/*.json"), key=lambda p: int(p.stem)):
        for m, row in records.read_stage(path).items():
            if m in rows and row.get("epochs") == rows[m].get("epochs") and "directory" in row:
                where[m] = row
    missing = sorted(set(rows) - set(where))
    if missing:
        raise SweepError(
            f"{directory}: no stage file says where members {missing} were checkpointed (a "
            "sweep of an older version); run it again to evaluate its ensemble"
        )
    return [rows[m] | {k: where[m][k] for k in ("directory", "index")} for m in sorted(rows)]


def evaluate(config, axes, directory) -> dict:
    """Every member of the sweep in `directory` (made from `config` and `axes`, which its
    sweep.json's fingerprint must match) on the test split, and their ensemble. Returns
    {"members": [{member, overrides, test_accuracy, test_loss}], "left_out": [diverged
    members], "ensemble": {accuracy, loss, members}}."""
    directory = Path(directory)
    described = directory / "sweep.json"
    if not described.exists():
        raise SweepError(f"{directory} holds no sweep.json: pass a sweep's --workdir")
    if json.loads(described.read_text())["fingerprint"] != grid.fingerprint(config, axes):
        raise SweepError(
            f"{described} records another config or sweep than the one given; pass the "
            "--config the sweep was run with"
        )
    rows = _rows(directory)
    kept = [row for row in rows if not row.get("diverged_at")]
    if not kept:
        raise SweepError(f"{directory}: every member diverged; there is no ensemble to evaluate")
    mesh = parallel.make_mesh(jax.devices()[:1])
    feeds: dict[str, object] = {}  # data config -> its train feed, loaded once each
    test_split = None  # (images, labels): the one every member is evaluated on
    pops: dict[str, population.Population] = {}  # population directory -> its checkpoint
    members, probabilities = [], []
    for row in kept:
        member_config = grid.member_config(config, row["overrides"])
        data_key = json.dumps(member_config.data.to_dict(), sort_keys=True)
        if data_key not in feeds:
            splits = run.load_splits(member_config)
            test_split = _one_test_split(test_split, splits[1])
            feeds[data_key] = run.make_feeds(member_config, splits[:2], mesh)[0]
        train_feed, (images, labels) = feeds[data_key], test_split
        if row["directory"] not in pops:
            size, spec = row["members_in_population"], settings.spec(member_config)
            template = population.template([member_config] * size, spec, train_feed)
            pops[row["directory"]] = population.load(
                directory / row["directory"], template, row["epochs"]
            )
        state = population.member(pops[row["directory"]], row["index"]).state
        p = member_probabilities(state, member_config, np.asarray(images))
        probabilities.append(p)
        one = combine(p[None], np.asarray(labels))
        members.append(
            dict(
                member=row["member"],
                overrides=row["overrides"],
                test_accuracy=one["accuracy"],
                test_loss=one["loss"],
            )
        )
    ensemble = combine(np.stack(probabilities), np.asarray(test_split[1]))
    left_out = [row["member"] for row in rows if row.get("diverged_at")]
    return dict(members=members, left_out=left_out, ensemble=dict(ensemble, members=len(kept)))


def _one_test_split(first, test):
    """The test split (images, labels) of the members so far (None: no member yet), which a new
    data config's `test` must equal, refused before its members are evaluated: an ensemble
    averages predictions for the same examples."""
    if first is not None and not all(
        np.array_equal(a, b) for a, b in zip(first, test, strict=True)
    ):
        raise SweepError(
            "the sweep's members are evaluated on different test splits (the sweep changes "
            "data fields that choose the data set); an ensemble needs one"
        )
    return test if first is None else first


def format_report(result: dict) -> str:
    """Each member's test accuracy and loss, their mean ± std, and the ensemble's."""
    accuracies = np.array([100 * m["test_accuracy"] for m in result["members"]])
    spread = float(accuracies.std(ddof=1)) if len(accuracies) > 1 else 0.0
    table = [
        (
            m["member"],
            _text(m["overrides"]),
            f"{100 * m['test_accuracy']:.2f}",
            f"{m['test_loss']:.4f}",
        )
        for m in result["members"]
    ]
    ens = result["ensemble"]
    lines = [
        tables.format_table(
            ("member", "overrides", "test accuracy %", "test loss"), table, right=(0, 2, 3)
        ),
        f"single models: {accuracies.mean():.2f} ± {spread:.2f}% over {len(accuracies)} "
        "(mean ± std, ddof 1, as the sweep's table)",
        f"ensemble of {ens['members']} (mean of their probabilities): "
        f"{100 * ens['accuracy']:.2f}%, loss {ens['loss']:.4f}",
    ]
    if result["left_out"]:
        lines.append(f"left out (diverged): members {result['left_out']}")
    return "\n".join(lines)


def _text(overrides: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items())
