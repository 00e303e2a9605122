"""cnnjax's trainer against its idiomatic peers, side by side in one run: each method and batch
size measured (cnnjax.bench.measuring) in a fresh process of its own, so that none inherits
another's threads, caches or memory and its peak resident memory is its own; then the rows set
against the fastest and the machine's matmul peak, as tables and files.

Timings exclude compilation (reported apart) and a warm-up; each figure is the median of
`repeats` timed windows with the min and max beside it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import ml_collections

from cnnjax import models, runtime
from cnnjax.bench import machine, measuring
from cnnjax.output import tables
from cnnjax.training import settings

TORCH_MISSING = "torch not installed: pip install -e .[torch]"
_RESULT = "cnnjax.bench.benchmark result: "


def tuned(method: str) -> bool:
    """Whether `method` runs under cnnjax.runtime's settings: cnnjax's own methods (as every
    experiment entry point applies them) and peers named with measuring.TUNED, unless
    $CNNJAX_UNTUNED."""
    wanted = method.startswith("cnnjax") or method.endswith(measuring.TUNED)
    return wanted and runtime.wanted()


def _child() -> None:
    """A measuring process: a job (JSON) on stdin, its row on stdout. Applies cnnjax.runtime's
    settings first (before JAX starts) if the method is `tuned`."""
    job = json.loads(sys.stdin.read())
    job["config"] = ml_collections.ConfigDict(job["config"])
    deterministic = job["config"].train.deterministic
    settings = runtime.tune(deterministic=deterministic) if tuned(job["method"]) else {}
    print(_RESULT + json.dumps(dict(measuring.measure(**job), runtime=settings)), flush=True)


def _in_own_process(job: dict) -> dict:
    """`measuring.measure(**job)` in a fresh Python process; {"error": why} if it failed. The
    process starts with the XLA flags this one started with (less runtime.tune()'s)."""
    command = [sys.executable, "-c", "from cnnjax.bench import benchmark; benchmark._child()"]
    done = subprocess.run(
        command,
        input=json.dumps(job),
        capture_output=True,
        text=True,
        env=runtime.untuned_environ(),
        check=False,
    )
    results = [line for line in done.stdout.splitlines() if line.startswith(_RESULT)]
    if done.returncode != 0 or not results:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        where = f"{job['method']}, batch {job['batch_size']}"
        return dict(error=f"{where}: failed (exit {done.returncode}): {last}")
    return json.loads(results[-1][len(_RESULT) :])


def _torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def _relative(rows, flops: int, peak_gflop_s: float) -> None:
    """Adds ratio (img/s over the fastest row's with the same batch), GFLOP/s, peak fraction."""
    for row in rows:
        fastest = max(r["img_per_s"] for r in rows if r.get("batch") == row.get("batch"))
        row["ratio"] = row["img_per_s"] / fastest
        row["gflop_per_s"] = row["img_per_s"] * flops / 1e9
        row["peak_fraction"] = row["gflop_per_s"] / peak_gflop_s


def _measured(config, method, batch, images, repeats, eval_images, *, evaluate) -> dict:
    """One method at one batch size in its own process (`measuring.measure`)."""
    job = dict(
        method=method,
        batch_size=batch,
        config=config.to_dict(),
        repeats=repeats,
        steps=max(2, -(-images // batch)),
        eval_images=eval_images,
        evaluate=evaluate,
    )
    return _in_own_process(job)


def _settings(config, batch_sizes, images: int, repeats: int, eval_images: int) -> dict:
    return dict(
        spec=config.model.spec,
        batch_sizes=list(batch_sizes),
        images_per_window=images,
        repeats=repeats,
        eval_images=eval_images,
        eval_batch=measuring.EVAL_BATCH,
        learning_rate=config.optim.learning_rate,
        momentum=config.optim.momentum,
    )


def peers_vs_cnnjax(
    config,
    *,
    methods=measuring.METHODS,
    batch_sizes=(32, 128, 512),
    images=4096,
    repeats=3,
    eval_images=5000,
    matmul_n=2048,
    progress=print,
) -> dict:
    """cnnjax's trainer against its peers on `config`'s network, each method and batch size in
    its own process (`measuring.measure`), one after another; windows of ceil(images / batch)
    steps (at least 2). Evaluation is timed once per method, with the first batch size.

    Returns {"machine", "settings", "matmul", "flops", "train": rows, "eval": rows, "notes",
    "seconds"}; train rows have method, batch, img_per_s (+ _min, _max), compile_s, ratio,
    gflop_per_s, peak_fraction, peak_rss_mib, rss_growth_mib, loss; eval rows the same less the
    memory (ratio against the fastest evaluation)."""
    start, notes, progress = time.perf_counter(), [], progress or (lambda line: None)
    unknown = sorted(set(methods) - set(measuring.METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {measuring.METHODS}")
    if any(m in measuring.TORCH_METHODS for m in methods) and not _torch_available():
        notes.append(TORCH_MISSING)
        methods = [m for m in methods if m not in measuring.TORCH_METHODS]
    results = dict(machine=machine.machine(), matmul=machine.matmul_peak(matmul_n))
    results.update(train=[], eval=[])
    spec = settings.spec(config)
    results["flops"] = machine.flops_per_image(spec, models.REFERENCE_INPUT_SHAPE)
    results["settings"] = _settings(config, batch_sizes, images, repeats, eval_images)
    for batch in batch_sizes:
        for method in methods:
            first = batch == batch_sizes[0]
            row = _measured(config, method, batch, images, repeats, eval_images, evaluate=first)
            if "error" in row:
                notes.append(row["error"])
                progress(f"  {row['error']}")
                continue
            if "eval" in row:
                results["eval"].append(row.pop("eval"))
            results["train"].append(row)
            progress(f"  batch {batch:4d}  {method:16s} {row['img_per_s']:9,.0f} img/s")
    peak = results["matmul"]["gflop_per_s"]
    _relative(results["train"], results["flops"]["train"], peak)
    _relative(results["eval"], results["flops"]["forward"], peak)
    results["machine"]["load_average_after"] = os.getloadavg()[0]
    return dict(results, notes=notes, seconds=time.perf_counter() - start)


# --------------------------------------------------------------------------- tables and files


def _table(header, rows, right, markdown: bool) -> str:
    if not markdown:
        return tables.format_table(header, rows, right=right)
    rule = ["---:" if i in right else "---" for i in range(len(header))]
    return "\n".join("| " + " | ".join(map(str, line)) + " |" for line in [header, rule, *rows])


def _rates_cells(r) -> tuple:
    return (
        f"{r['img_per_s']:,.0f}",
        f"{r['img_per_s_min']:,.0f}-{r['img_per_s_max']:,.0f}",
        f"{r['ratio']:.2f}",
        f"{r['compile_s']:.1f}",
        f"{r['gflop_per_s']:.1f}",
        f"{100 * r['peak_fraction']:.1f}%",
        f"{r['load_average']:.1f}",
    )


def _preamble(results: dict) -> list[str]:
    """The machine, the matmul peak, the FLOP count and how to read the training table."""
    m, peak, flops, s = (results[k] for k in ("machine", "matmul", "flops", "settings"))
    return [
        f"machine: {m['cpu']}, {m['cores']} cores, {m['arch']}; jax {m['jax']} ({m['backend']}, "
        f"{m['device']}), flax {m['flax']}, torch {m['torch'] or 'not installed'}; load average "
        f"{m['load_average']:.2f} before, {m.get('load_average_after', 0):.2f} after",
        f"matmul peak: {peak['gflop_per_s']:.1f} GFLOP/s float32 (jnp.matmul, n = {peak['n']}, "
        f"best of its repeats; median {peak['gflop_per_s_median']:.1f})",
        f"work per image: training {flops['train'] / 1e6:.2f} MFLOP (3 x forward), forward "
        f"{flops['forward'] / 1e6:.2f} MFLOP",
        f"training: img/s is the median of {s['repeats']} timed windows of "
        f"~{s['images_per_window']} images (min-max beside it); vs fastest = img/s / the "
        "fastest img/s at that batch size;"
        " load: the 1-minute load average as the row finished (the measurement itself makes up"
        f" to {m['cores']}; more: other processes shared the cores); memory: the measuring"
        " process's peak RSS (ru_maxrss: interpreter, imports, data, model, compiler) and its"
        " growth over the RSS after imports and data",
    ]


_HEADER = (
    "batch",
    "method",
    "img/s",
    "min-max",
    "vs fastest",
    "compile s",
    "GFLOP/s",
    "% of peak",
    "load",
    "peak RSS MiB",
    "RSS growth MiB",
)


def _train_cells(r) -> tuple:
    memory = (f"{r['peak_rss_mib']:,.0f}", f"{r['rss_growth_mib']:,.0f}")
    return (r["batch"], r["method"], *_rates_cells(r), *memory)


def format_results(results: dict, *, markdown: bool = False) -> str:
    """The machine, the matmul peak and the FLOP count, then a training and an evaluation table
    (plain text, or markdown)."""
    train_rows = [_train_cells(r) for r in results["train"]]
    eval_rows = [(r["method"], *_rates_cells(r)) for r in results["eval"]]
    s = results["settings"]
    blocks = [
        *_preamble(results),
        _table(_HEADER, train_rows, (0, *range(2, 11)), markdown),
        f"evaluation: forward only, {s['eval_images']} images in batches of {s['eval_batch']}",
        _table(("method", *_HEADER[2:9]), eval_rows, range(1, 8), markdown),
        *(f"note: {note}" for note in results["notes"]),
        f"benchmark wall time {results['seconds']:.0f} s",
    ]
    return ("\n\n" if markdown else "\n").join(blocks)


def write_results(results: dict, out) -> Path:
    """results.json and results.md in the directory `out` (created); returns it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(format_results(results, markdown=True) + "\n")
    return out
