"""Benchmarks: steady-state training throughput measured side by side in one run.

Timings exclude compilation (reported apart) and a warm-up; each figure is the median of
`repeats` timed windows with the min and max beside it. Inputs are random uint8 images of the
real shape: throughput does not depend on pixel values. Legend: M members, S steps, B batch.

Two comparisons: a sweep's members as one population program vs one after another (in this
process), and cnnjax's trainer vs its idiomatic peers (cnnjax.peers), each method and batch size
in a fresh process of its own, so that none inherits another's threads, caches or memory and
its peak resident memory is its own. Also: a finished run's time to a target accuracy.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnnjax import feed, models, ops, parallel, peers, population, report, run, runtime, train


def _compile(jitted, *args):
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - start


def _windows(run_window, repeats: int) -> list[float]:
    run_window()  # warm-up: first-call allocations, caches
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_window()
        seconds.append(time.perf_counter() - start)
    return seconds


def sequential(configs, spec, data, idx_MSB, repeats: int) -> dict:
    """M solo runs one after another, each with its own compiled step (its numbers are
    constants in its program), as `python -m experiments.train` runs them; `data` a feed."""
    steps_per_epoch = len(data.split[1]) // configs[0].train.batch_size
    compiled, states, batches, compile_s = [], [], [], 0.0
    for config, idx_SB in zip(configs, idx_MSB, strict=True):
        optimizer = train.make_optimizer(config.optim, steps_per_epoch, config.train.epochs)
        state = train.init_state(config.seed, spec, data.split[0].shape[1:], optimizer)
        step = jax.jit(train.fed_step(data, spec=spec, optimizer=optimizer, config=config),
                       donate_argnums=0)  # fmt: skip
        batches.append(list(data.batches(idx_SB)))
        fn, seconds = _compile(step, state, data.resident, batches[-1][0])
        compiled.append(fn)
        states.append(state)
        compile_s += seconds

    def window():
        for k, fn in enumerate(compiled):
            for batch in batches[k]:
                states[k], metrics = fn(states[k], data.resident, batch)
            jax.block_until_ready(metrics)

    return dict(compile_s=compile_s, seconds=_windows(window, repeats))


def together(configs, spec, data, idx_MSB, repeats: int, layout: str) -> dict:
    """The same M members as one population program (cnnjax.population, `layout`)."""
    steps_per_epoch = len(data.split[1]) // configs[0].train.batch_size
    pop = population.init(configs, spec, data.split[0].shape[1:], steps_per_epoch)
    step = population.make_step(spec, configs[0], steps_per_epoch, layout, data)
    batches = list(data.batches(idx_MSB.transpose(1, 0, 2), axis=1))
    fn, compile_s = _compile(step, pop, data.resident, batches[0])
    holder = [pop]

    def window():
        for batch_M in batches:
            holder[0], metrics = fn(holder[0], data.resident, batch_M)
        jax.block_until_ready(metrics)

    return dict(compile_s=compile_s, seconds=_windows(window, repeats))


def population_vs_sequential(configs, *, steps: int, repeats: int, layouts, examples=60000):
    """Rows (a dict per method: compile_s, img_per_s median/min/max, ratio to sequential) for M
    members run sequentially and as one program in each of `layouts`."""
    config = configs[0]
    spec = models.SPECS[config.model.spec]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (examples, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, examples, dtype=np.int32)
    idx_MSB = rng.integers(0, examples, (len(configs), steps, config.train.batch_size),
                           dtype=np.int32)  # fmt: skip
    data = feed.DeviceFeed((images, labels), parallel.make_mesh(jax.devices()[:1]))
    measured = {"sequential": sequential(configs, spec, data, idx_MSB, repeats)}
    for layout in layouts:
        measured[f"population ({layout})"] = together(configs, spec, data, idx_MSB, repeats,
                                                      layout)  # fmt: skip
    work = len(configs) * steps * config.train.batch_size  # images per window
    base = np.median(work / np.asarray(measured["sequential"]["seconds"]))
    rows = []
    for name, m in measured.items():
        rates = work / np.asarray(m["seconds"])
        rows.append(dict(method=name, members=len(configs), batch=config.train.batch_size,
                         compile_s=m["compile_s"], img_per_s=float(np.median(rates)),
                         img_per_s_min=float(rates.min()), img_per_s_max=float(rates.max()),
                         ratio=float(np.median(rates) / base)))  # fmt: skip
    return rows


# --------------------------------------------------------------------------- the machine

METHODS = ("cnnjax autodiff", "cnnjax hand", "flax nnx", "flax linen", "flax linen + runtime",
           "pytorch eager", "pytorch eager + runtime", "torch.compile")  # fmt: skip
# A peer run under cnnjax.runtime's settings, as cnnjax's methods always are: its malloc settings
# speed up PyTorch's CPU tensors too, and its XLA flag Flax's convolutions.
TUNED = " + runtime"
TORCH_METHODS = ("pytorch eager", "pytorch eager + runtime", "torch.compile")
TORCH_MISSING = "torch not installed: pip install -e .[torch]"
EVAL_BATCH = 1000
TARGETS = {"fashion_mnist": 0.91, "mnist": 0.99}  # test accuracy that time_to_accuracy waits for


def flops_per_image(spec, input_shape) -> dict:
    """FLOPs of one image through `spec`, from the shapes alone: {"forward", "train"}.

    A conv layer with an H'xW'xO output and a kh x kw x C kernel does H'W'O·kh·kw·C multiply-adds
    (MACs), a dense layer I -> O does I·O, and a MAC is 2 FLOPs:
        forward = 2 · Σ MACs
    The backward pass computes each layer's input gradient (a full convolution with the flipped
    kernel, or W·dy: the layer's MACs again) and its weight gradient (x correlated with dy, or
    x·dyᵀ: the MACs again), so backward ≈ 2 · forward and
        train = forward + backward = 3 · forward  (per image per step).
    This counts the first layer's input gradient too, which no step computes (for the reference
    net 2·194,688 FLOPs, 2.5% of its total), and leaves out bias adds, ReLU, pooling, softmax and
    the optimizer's update, which are O(activations + params) (about 2% the other way).
    Reference CNN: conv1 26·26·32·9 = 194,688, conv2 11·11·64·288 = 2,230,272, dense1 1600·128 =
    204,800, dense2 128·10 = 1,280: 2,631,040 MACs, forward 5.26 MFLOP, train 15.79 MFLOP.
    """
    macs, shape = 0, tuple(input_shape)
    for layer in spec:
        out = models.layer_output_shape(layer, shape)
        if isinstance(layer, models.Conv):
            kh, kw = ops.as_pair(layer.kernel_size, "kernel_size")
            macs += int(np.prod(out)) * kh * kw * shape[-1]
        elif isinstance(layer, models.Dense):
            macs += layer.features * shape[-1]
        shape = out
    return dict(forward=2 * macs, train=6 * macs)


def matmul_peak(n: int = 2048, repeats: int = 10) -> dict:
    """The machine's float32 matmul rate: a jitted n x n @ n x n (2n³ FLOPs), best of `repeats`
    (the peak) and their median, in GFLOP/s."""
    a, b = jax.random.normal(jax.random.key(0), (2, n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    jax.block_until_ready(matmul(a, b))
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(matmul(a, b))
        seconds.append(time.perf_counter() - start)
    rates = 2 * n**3 / np.asarray(seconds) / 1e9
    return dict(n=n, gflop_per_s=float(rates.max()), gflop_per_s_median=float(np.median(rates)))


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> dict:
    """CPU model (/proc/cpuinfo), cores, versions, jax's backend, the load average now."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return dict(
        cpu=names[0] if names else platform.processor() or platform.machine(),
        cores=os.cpu_count(), arch=platform.machine(), python=platform.python_version(),
        jax=jax.__version__, backend=jax.default_backend(), device=jax.devices()[0].device_kind,
        flax=_version("flax"), torch=_version("torch"), load_average=os.getloadavg()[0],
    )  # fmt: skip


def _rss_mib() -> float:
    """This process's resident memory now (Linux /proc; 0 elsewhere)."""
    statm = Path("/proc/self/statm")
    if not statm.exists():
        return 0.0
    return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    """ru_maxrss: the most resident memory this process has held (KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


# --------------------------------------------------------------------------- one method


def train_config(config, gradients: str, batch_size: int) -> ml_collections.ConfigDict:
    """`config` with what every method shares: SGD with plain momentum at a constant rate; no
    weight decay, warm-up, augmentation or label smoothing; `gradients` for cnnjax's step."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.optim.update(schedule="constant", warmup_epochs=0.0, weight_decay=0.0, nesterov=False)
    config.train.update(gradients=gradients, batch_size=batch_size, label_smoothing=0.0,
                        scan="no")  # fmt: skip
    config.data.update(shift=0, flip=False)
    return config


def _cnnjax_windows(method, config, spec, params, data):
    """cnnjax's trainer as experiments.train runs it: make_train_steps (a loop over the jitted
    step, state donated) on indices into the uint8 split kept on the device."""
    config = train_config(config, method.split()[1], data["idx_SB"].shape[1])
    optimizer = train.make_optimizer(config.optim, steps_per_epoch=1, epochs=1)
    state = train.init_state(config.seed, spec, data["images"].shape[1:], optimizer)
    holder = [state._replace(params=params, opt_state=optimizer.init(params))]
    mesh = parallel.make_mesh(jax.devices()[:1])
    train_feed = feed.DeviceFeed((data["images"], data["labels"]), mesh)
    eval_feed = feed.DeviceFeed((data["eval_images"], data["eval_labels"]), mesh)
    run_steps = train.make_train_steps(spec, optimizer, config, train_feed)

    def train_window():
        holder[0], metrics = run_steps(holder[0], data["idx_SB"])
        return float(metrics["loss"][-1])

    def eval_window():
        jax.block_until_ready(train.evaluate_fed(holder[0].params, eval_feed, spec=spec,
                                                 batch_size=EVAL_BATCH))  # fmt: skip

    return train_window, eval_window


def _peer_windows(method, config, spec, params, data):
    """A peer's loop on host batches made beforehand (as a prefetching loader would have them)."""
    lr, momentum = config.optim.learning_rate, config.optim.momentum
    method = method.removesuffix(TUNED)
    if method == "flax nnx":
        peer = peers.nnx_peer(params, spec, data["images"].shape[1:], learning_rate=lr,
                              momentum=momentum)  # fmt: skip
    elif method == "flax linen":
        peer = peers.linen_peer(params, spec, learning_rate=lr, momentum=momentum)
    else:
        peer = peers.torch_peer(params, spec, learning_rate=lr, momentum=momentum,
                                compile=method == "torch.compile")  # fmt: skip
    batches = [peer.batch(data["images"][idx], data["labels"][idx]) for idx in data["idx_SB"]]
    starts = range(0, len(data["eval_images"]), EVAL_BATCH)
    evals = [peer.batch(data["eval_images"][i : i + EVAL_BATCH],
                        data["eval_labels"][i : i + EVAL_BATCH]) for i in starts]  # fmt: skip

    def train_window():
        for batch in batches:
            loss = peer.step(batch)
        return float(peer.wait(loss))

    def eval_window():
        for batch in evals:
            peer.wait(peer.logits(batch))

    return train_window, eval_window


def _timed(window, repeats: int):
    """Seconds of the first call (it compiles and warms up) and of `repeats` more; the last
    call's result."""
    seconds = []
    for _ in range(1 + repeats):
        start = time.perf_counter()
        result = window()
        seconds.append(time.perf_counter() - start)
    return seconds[0], seconds[1:], result


def _rates(work: int, first: float, seconds) -> dict:
    rates = work / np.asarray(seconds)
    return dict(img_per_s=float(np.median(rates)), img_per_s_min=float(rates.min()),
                img_per_s_max=float(rates.max()),
                compile_s=first - float(np.median(seconds)))  # fmt: skip


def measure(method, batch_size, config, *, steps, repeats, eval_images, evaluate,
            examples=10_000) -> dict:  # fmt: skip
    """One method at one batch size, in this process: training img/s over windows of `steps`
    steps, and (if `evaluate`) forward img/s over `eval_images` images in batches of EVAL_BATCH.
    compile_s is the first window's seconds minus a steady window's (tracing, compilation and
    first-call set-up). Memory: ru_maxrss, the process's peak resident memory, and its growth
    over the resident memory after the imports and the data, before the method was built.
    load_average: the machine's 1-minute load at the end; the measurement itself makes up to the
    core count, more means other processes shared the cores."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method in TORCH_METHODS:
        import torch  # noqa: F401  (its import belongs to the baseline, not to the method)
    spec, input_shape = models.SPECS[config.model.spec], models.REFERENCE_INPUT_SHAPE
    rng = np.random.default_rng(config.seed)
    data = dict(
        images=rng.integers(0, 256, (examples, *input_shape), np.uint8),
        labels=rng.integers(0, 10, examples).astype(np.int32),
        idx_SB=rng.integers(0, examples, (steps, batch_size)).astype(np.int32),
        eval_images=rng.integers(0, 256, (eval_images, *input_shape), np.uint8),
        eval_labels=rng.integers(0, 10, eval_images).astype(np.int32),
    )
    baseline_mib = _rss_mib()
    params = models.init(jax.random.key(config.seed), spec, input_shape)
    windows = _cnnjax_windows if method.startswith("cnnjax") else _peer_windows
    train_window, eval_window = windows(method, config, spec, params, data)
    first, seconds, loss = _timed(train_window, repeats)
    row = dict(method=method, batch=batch_size, steps=steps, loss=loss,
               **_rates(steps * batch_size, first, seconds))  # fmt: skip
    if evaluate:
        first, seconds, _ = _timed(eval_window, repeats)
        row["eval"] = dict(method=method, images=eval_images, **_rates(eval_images, first, seconds))
    peak, load = _peak_rss_mib(), os.getloadavg()[0]
    if evaluate:
        row["eval"]["load_average"] = load
    return dict(row, peak_rss_mib=peak, rss_growth_mib=peak - baseline_mib, load_average=load)


# --------------------------------------------------------------------------- cnnjax vs its peers

_RESULT = "cnnjax.benchmark result: "


def tuned(method: str) -> bool:
    """Whether `method` runs under cnnjax.runtime's settings: cnnjax's own methods (as every
    experiment entry point applies them) and peers named with TUNED, unless $CNNJAX_UNTUNED."""
    wanted = method.startswith("cnnjax") or method.endswith(TUNED)
    return wanted and runtime.wanted()


def _child() -> None:
    """A measuring process: a job (JSON) on stdin, its row on stdout. Applies cnnjax.runtime's
    settings first (before JAX starts) if the method is `tuned`."""
    job = json.loads(sys.stdin.read())
    job["config"] = ml_collections.ConfigDict(job["config"])
    deterministic = job["config"].train.deterministic
    settings = runtime.tune(deterministic=deterministic) if tuned(job["method"]) else {}
    print(_RESULT + json.dumps(dict(measure(**job), runtime=settings)), flush=True)


def _in_own_process(job: dict) -> dict:
    """`measure(**job)` in a fresh Python process; {"error": why} if it failed. The process
    starts with the XLA flags this one started with (less runtime.tune()'s)."""
    command = [sys.executable, "-c", "from cnnjax import benchmark; benchmark._child()"]
    done = subprocess.run(command, input=json.dumps(job), capture_output=True, text=True,
                          env=runtime.untuned_environ(), check=False)  # fmt: skip
    results = [line for line in done.stdout.splitlines() if line.startswith(_RESULT)]
    if done.returncode != 0 or not results:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return dict(error=f"{job['method']}, batch {job['batch_size']}: failed "
                          f"(exit {done.returncode}): {last}")  # fmt: skip
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


def peers_vs_cnnjax(config, *, methods=METHODS, batch_sizes=(32, 128, 512), images=4096,
                    repeats=3, eval_images=5000, matmul_n=2048,
                    progress=print) -> dict:  # fmt: skip
    """cnnjax's trainer against its peers on `config`'s network, each method and batch size in
    its own process (`measure`), one after another; windows of ceil(images / batch) steps
    (at least 2). Evaluation is timed once per method, with the first batch size.

    Returns {"machine", "settings", "matmul", "flops", "train": rows, "eval": rows, "notes",
    "seconds"}; train rows have method, batch, img_per_s (+ _min, _max), compile_s, ratio,
    gflop_per_s, peak_fraction, peak_rss_mib, rss_growth_mib, loss; eval rows the same less the
    memory (ratio against the fastest evaluation)."""
    start, notes, progress = time.perf_counter(), [], progress or (lambda line: None)
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {METHODS}")
    if any(m in TORCH_METHODS for m in methods) and not _torch_available():
        notes.append(TORCH_MISSING)
        methods = [m for m in methods if m not in TORCH_METHODS]
    results = dict(machine=machine(), matmul=matmul_peak(matmul_n), train=[], eval=[])
    spec = models.SPECS[config.model.spec]
    results["flops"] = flops_per_image(spec, models.REFERENCE_INPUT_SHAPE)
    results["settings"] = dict(
        spec=config.model.spec, batch_sizes=list(batch_sizes), images_per_window=images,
        repeats=repeats, eval_images=eval_images, eval_batch=EVAL_BATCH,
        learning_rate=config.optim.learning_rate, momentum=config.optim.momentum,
    )  # fmt: skip
    for batch in batch_sizes:
        for method in methods:
            job = dict(method=method, batch_size=batch, config=config.to_dict(), repeats=repeats,
                       steps=max(2, -(-images // batch)), eval_images=eval_images,
                       evaluate=batch == batch_sizes[0])  # fmt: skip
            row = _in_own_process(job)
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
        return report.format_table(header, rows, right=right)
    rule = ["---:" if i in right else "---" for i in range(len(header))]
    return "\n".join("| " + " | ".join(map(str, line)) + " |" for line in [header, rule, *rows])


def _rates_cells(r) -> tuple:
    return (f"{r['img_per_s']:,.0f}", f"{r['img_per_s_min']:,.0f}-{r['img_per_s_max']:,.0f}",
            f"{r['ratio']:.2f}", f"{r['compile_s']:.1f}", f"{r['gflop_per_s']:.1f}",
            f"{100 * r['peak_fraction']:.1f}%", f"{r['load_average']:.1f}")  # fmt: skip


def format_results(results: dict, *, markdown: bool = False) -> str:
    """The machine, the matmul peak and the FLOP count, then a training and an evaluation table
    (plain text, or markdown)."""
    m, peak, flops, s = (results[k] for k in ("machine", "matmul", "flops", "settings"))
    header = ("batch", "method", "img/s", "min-max", "vs fastest", "compile s", "GFLOP/s",
              "% of peak", "load", "peak RSS MiB", "RSS growth MiB")  # fmt: skip
    train_rows = [(r["batch"], r["method"], *_rates_cells(r), f"{r['peak_rss_mib']:,.0f}",
                   f"{r['rss_growth_mib']:,.0f}") for r in results["train"]]  # fmt: skip
    eval_rows = [(r["method"], *_rates_cells(r)) for r in results["eval"]]
    blocks = [
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
        _table(header, train_rows, (0, *range(2, 11)), markdown),
        f"evaluation: forward only, {s['eval_images']} images in batches of {s['eval_batch']}",
        _table(("method", *header[2:9]), eval_rows, range(1, 8), markdown),
        *(f"note: {note}" for note in results["notes"]),
        f"benchmark wall time {results['seconds']:.0f} s",
    ]  # fmt: skip
    return ("\n\n" if markdown else "\n").join(blocks)


def write_results(results: dict, out) -> Path:
    """results.json and results.md in the directory `out` (created); returns it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(format_results(results, markdown=True) + "\n")
    return out


# --------------------------------------------------------------------------- time to accuracy


def time_to_accuracy(workdir, target: float | None = None) -> dict:
    """Seconds of training until a finished run's test accuracy first reached `target` (None:
    TARGETS of the run's dataset, from its config.json).

    An epoch row of metrics.jsonl holds the wall seconds of that epoch (its steps, compilation
    in the first one, and its test evaluation); the time to the target is their sum up to and
    including the first epoch whose test_accuracy >= target. Returns {"run", "dataset", "target",
    "reached", "epoch", "seconds" (None when never reached), "best_accuracy", "epochs",
    "total_seconds"}."""
    workdir = Path(workdir)
    dataset = run.load_config(workdir).data.name
    if target is None:
        if dataset not in TARGETS:
            raise ValueError(f"no default target for dataset {dataset!r}; pass a target")
        target = TARGETS[dataset]
    epochs = report.read_metrics(workdir / "metrics.jsonl", kind="epoch")
    result = dict(run=str(workdir), dataset=dataset, target=target, reached=False, epoch=None,
                  seconds=None, best_accuracy=max((r["test_accuracy"] for r in epochs),
                                                  default=None),
                  epochs=len(epochs), total_seconds=sum(r["seconds"] for r in epochs))  # fmt: skip
    elapsed = 0.0
    for row in epochs:
        elapsed += row["seconds"]
        if row["test_accuracy"] >= target:
            return dict(result, reached=True, epoch=row["epoch"], seconds=elapsed)
    return result


def format_time_to_accuracy(rows) -> str:
    header = ("run", "dataset", "target", "reached at epoch", "seconds", "best accuracy",
              "epochs", "run seconds")  # fmt: skip
    body = [(r["run"], r["dataset"], f"{r['target']:.2%}",
             r["epoch"] if r["reached"] else "never", "-" if r["seconds"] is None
             else f"{r['seconds']:.1f}", f"{r['best_accuracy']:.2%}", r["epochs"],
             f"{r['total_seconds']:.1f}") for r in rows]  # fmt: skip
    return report.format_table(header, body, right=range(2, 8))
