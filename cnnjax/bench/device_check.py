"""The accelerator check: on whatever backend JAX finds, the checks and measurements an
accelerator needs, each a part, into one results folder.

Parts (PARTS), in order; a part that fails is recorded with its error and the others still run:
  gradcheck  the hand-derived rules vs jax.grad vs finite differences (cnnjax.gradcheck), a short
             run, at the highest matmul precision (as every gradient check runs)
  parity     pure cnnjax vs flax.nnx vs flax.linen on real test images where their IDX files are
             found, else on random ones (cnnjax.flax_models.parity_report)
  train      a short real training run (run.fit) into DIR/train
  benchmark  cnnjax's trainer vs its Flax (and PyTorch, where installed) peers side by side
             (cnnjax.bench.benchmark.peers_vs_cnnjax) into DIR/benchmark
  sweep      a sweep's members as one program in each layout vs one after another
             (cnnjax.bench.layouts.population_vs_sequential)
DIR/device_check.json holds every result with the seconds of each part and the environment;
DIR/device_check.md the same as tables, ready for README.
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path

import jax
import numpy as np

from cnnjax import flax_models, gradcheck, models, runtime
from cnnjax.bench import benchmark, layouts
from cnnjax.output import jsonl, tables
from cnnjax.sweeps import grid
from cnnjax.training import idx, run

PARTS = ("gradcheck", "parity", "train", "benchmark", "sweep")


def gradient_check(config) -> dict:
    dtypes = tuple(config.dtypes)
    rows = gradcheck.run_all(config.num_random_specs, config.seed, dtypes, config.layer_cases)
    failed = [row for row in rows if not row.passed]
    table = gradcheck.format_table(gradcheck.aggregate(rows) + failed)
    return dict(checks=len(rows), failed=len(failed), summary=gradcheck.summary(rows), table=table)


def flax_parity(config) -> dict:
    source = idx.find_source_dir(config.dataset, config.source_dir or None)
    if source is None:  # no IDX files here: random images test the same arithmetic
        rng = np.random.default_rng(config.seed)
        images = rng.integers(0, 256, (config.batch, *models.REFERENCE_INPUT_SHAPE), np.uint8)
        labels, where = rng.integers(0, 10, config.batch), "random images"
    else:
        images, labels = idx.read_split(config.dataset, "test", source)
        where = f"{config.dataset} test images from {source}"
    x = jax.numpy.asarray(idx.normalize(images[: config.batch]))
    spec, input_shape = models.REFERENCE_CNN, models.REFERENCE_INPUT_SHAPE
    params = models.init(jax.random.key(config.seed), spec, input_shape)
    rows = flax_models.parity_report(params, spec, x, jax.numpy.asarray(labels[: config.batch]))
    body = [_parity_cells(r) for r in rows]
    header = ("framework", "quantity", "max |diff|", "tolerance", "result")
    table = tables.format_table(header, body, right=(2, 3))
    passed = sum(r.passed for r in rows)
    return dict(data=where, batch=len(x), passed=passed, rows=len(rows), table=table)


def _parity_cells(r) -> tuple:
    verdict = "PASS" if r.passed else "FAIL"
    return (r.framework, r.quantity, f"{r.max_abs_diff:.3e}", f"{r.tolerance:.3e}", verdict)


def training_run(config, out: Path) -> dict:
    summary = run.fit(config, out / "train")
    return {k: v for k, v in summary.items() if k != "per_class_accuracy"}


def training_benchmark(config, out: Path) -> dict:
    results = benchmark.peers_vs_cnnjax(
        config.base,
        methods=tuple(config.methods),
        batch_sizes=tuple(config.batch_sizes),
        images=config.images,
        repeats=config.repeats,
        eval_images=config.eval_images,
        matmul_n=config.matmul_n,
        progress=print,
    )
    benchmark.write_results(results, out / "benchmark")
    return dict(results, table=benchmark.format_results(results, markdown=True))


def sweep_benchmark(config) -> dict:
    base = config.base
    members = grid.expand(base, config.axes)[: config.members]
    configs = [grid.member_config(base, o) for o in members]
    rows = layouts.population_vs_sequential(
        configs, steps=config.steps, repeats=config.repeats, layouts=tuple(config.layouts)
    )
    summary = (
        f"{len(configs)} members, batch {base.train.batch_size}, {config.steps} steps "
        f"per member per window, median of {config.repeats} windows"
    )
    table = layouts.format_layouts(rows)
    batch = base.train.batch_size
    return dict(rows=rows, members=len(configs), batch=batch, summary=summary, table=table)


def run_parts(config, out, progress=print) -> dict:
    """Every part of config.parts in order into the new directory `out`; returns the results."""
    out = Path(out)
    parts = [p.strip() for p in config.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"config.parts: unknown parts {unknown}; choose from {', '.join(PARTS)}")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty; choose a new --out (nothing was changed)")
    out.mkdir(parents=True, exist_ok=True)
    jobs = {"gradcheck": lambda: gradient_check(config.gradcheck),
            "parity": lambda: flax_parity(config.parity),
            "train": lambda: training_run(config.run, out),
            "benchmark": lambda: training_benchmark(config.benchmark, out),
            "sweep": lambda: sweep_benchmark(config.sweep)}  # fmt: skip
    results = dict(environment=runtime.environment(), parts={})
    for part in parts:
        progress(f"device check: {part} ...")
        start = time.perf_counter()
        try:
            done = dict(jobs[part](), ok=True)
        except Exception as error:  # recorded; the other parts still run
            why = f"{type(error).__name__}: {error}"
            done = dict(ok=False, error=why, traceback=traceback.format_exc())
        results["parts"][part] = dict(done, seconds=time.perf_counter() - start)
        verdict = "done" if done["ok"] else "FAILED"
        progress(f"device check: {part} {verdict} in {results['parts'][part]['seconds']:.1f} s")
    (out / "device_check.json").write_text(json.dumps(jsonl.plain(results), indent=2) + "\n")
    (out / "device_check.md").write_text(format_results(results) + "\n")
    return results


def all_passed(results: dict) -> bool:
    """Every part ran, every gradient check and parity row passed."""
    parts = results["parts"].values()
    checks = [results["parts"].get(p, {}) for p in ("gradcheck", "parity")]
    return all(done["ok"] for done in parts) and all(
        c.get("failed", 0) == 0 and c.get("passed", 0) == c.get("rows", 0) for c in checks
    )


def format_results(results: dict) -> str:
    """The results as markdown: the environment, then each part's table (or its error)."""
    env = results["environment"]
    versions = env["versions"]
    device = (
        f"device: {env['device_count']} x {env['device_kind']} ({env['backend']}); "
        f"jax {versions['jax']}, jaxlib {versions['jaxlib']}, flax "
        f"{versions['flax']}; XLA_FLAGS: {env['xla_flags'] or '(none)'}"
    )
    lines = [device]
    for part, done in results["parts"].items():
        lines += ["", f"## {part} ({done['seconds']:.1f} s)", ""]
        if not done["ok"]:
            lines.append(f"FAILED: {done['error']}")
        elif part == "train":
            lines.append(
                f"test accuracy {done['test_accuracy']:.4f} after {done['epochs']} "
                f"epochs, {done['train_seconds']:.1f} s of training, params hash "
                f"{done['params_hash'][:8]}"
            )
        elif part == "benchmark":  # already markdown
            lines.append(done["table"])
        else:
            lines += [
                done.get("summary") or done.get("data") or "",
                "",
                "```",
                done["table"],
                "```",
            ]
    total = sum(done["seconds"] for done in results["parts"].values())
    return "\n".join([*lines, "", f"device check: {total:.0f} s in all"])
