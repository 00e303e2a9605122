"""A sweep's members trained as one population program (in each layout) against the same members
trained one after another, in this process: steady-state images per second, compile time apart.

Inputs are random uint8 images of the real shape (throughput does not depend on pixel values).
Legend: M members, S steps, B batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from cnnjax import parallel
from cnnjax.bench import machine, timing
from cnnjax.output import tables
from cnnjax.sweeps import grid, population
from cnnjax.training import feed, settings, train


def sequential(configs, spec, data, idx_MSB, repeats: int) -> dict:
    """M solo runs one after another, each with its own compiled step (its numbers are
    constants in its program), as `python -m experiments.train` runs them; `data` a feed."""
    steps_per_epoch = len(data.split[1]) // configs[0].train.batch_size
    compiled, states, batches, compile_s = [], [], [], 0.0
    for config, idx_SB in zip(configs, idx_MSB, strict=True):
        optimizer = train.make_optimizer(config.optim, steps_per_epoch, config.train.epochs)
        state = train.init_state(config.seed, spec, data.split[0].shape[1:], optimizer)
        fed_step = train.fed_step(data, spec=spec, optimizer=optimizer, config=config)
        batches.append(list(data.batches(idx_SB)))
        fn, seconds = timing.compile_seconds(
            jax.jit(fed_step, donate_argnums=0), state, data.resident, batches[-1][0]
        )
        compiled.append(fn)
        states.append(state)
        compile_s += seconds

    def window():
        for k, fn in enumerate(compiled):
            for batch in batches[k]:
                states[k], metrics = fn(states[k], data.resident, batch)
            jax.block_until_ready(metrics)

    return dict(compile_s=compile_s, seconds=timing.time_windows(window, repeats).seconds)


def together(configs, spec, data, idx_MSB, repeats: int, layout: str) -> dict:
    """The same M members as one population program (cnnjax.sweeps.population, `layout`)."""
    steps_per_epoch = len(data.split[1]) // configs[0].train.batch_size
    pop = population.init(configs, spec, data.split[0].shape[1:], steps_per_epoch)
    step = population.make_step(spec, configs[0], steps_per_epoch, layout, data)
    batches = list(data.batches(idx_MSB.transpose(1, 0, 2), axis=1))
    fn, compile_s = timing.compile_seconds(step, pop, data.resident, batches[0])
    holder = [pop]

    def window():
        for batch_M in batches:
            holder[0], metrics = fn(holder[0], data.resident, batch_M)
        jax.block_until_ready(metrics)

    return dict(compile_s=compile_s, seconds=timing.time_windows(window, repeats).seconds)


def population_vs_sequential(configs, *, steps: int, repeats: int, layouts, examples=60000):
    """Rows (a dict per method: compile_s, img_per_s median/min/max, ratio to sequential) for M
    members run sequentially and as one program in each of `layouts`."""
    config = configs[0]
    batch_size = config.train.batch_size
    spec = settings.spec(config)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (examples, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, examples, dtype=np.int32)
    idx_MSB = rng.integers(0, examples, (len(configs), steps, batch_size), dtype=np.int32)
    data = feed.DeviceFeed((images, labels), parallel.make_mesh(jax.devices()[:1]))
    measured = {"sequential": sequential(configs, spec, data, idx_MSB, repeats)}
    for layout in layouts:
        measured[f"population ({layout})"] = together(configs, spec, data, idx_MSB, repeats, layout)
    work = len(configs) * steps * batch_size  # images per window
    base = timing.rates(work, measured["sequential"]["seconds"])["img_per_s"]
    rows = []
    for name, m in measured.items():
        rates = timing.rates(work, m["seconds"])
        head = dict(method=name, members=len(configs), batch=batch_size, compile_s=m["compile_s"])
        rows.append(dict(head, **rates, ratio=rates["img_per_s"] / base))
    return rows


def format_layouts(rows) -> str:
    """population_vs_sequential's rows as a text table."""
    header = ("method", "compile s", "img/s (median)", "min-max", "vs sequential")
    body = [
        (
            r["method"],
            f"{r['compile_s']:.1f}",
            f"{r['img_per_s']:,.0f}",
            f"{r['img_per_s_min']:,.0f}-{r['img_per_s_max']:,.0f}",
            f"{r['ratio']:.2f}x",
        )
        for r in rows
    ]
    return tables.format_table(header, body, right=(1, 2, 3, 4))


def compare_layouts(config, axes, *, steps: int, repeats: int, layouts, out) -> str:
    """Every member of the sweep (`config` over `axes`) timed as population_vs_sequential does;
    the machine and the rows go to out/results.json, the machine and the table to
    out/results.md (`out` created).

    Returns:
        the text to print: members, batch and machine on one line, then the table.
    """
    configs = [grid.member_config(config, o) for o in grid.expand(config, axes)]
    rows = population_vs_sequential(configs, steps=steps, repeats=repeats, layouts=layouts)
    where = machine.machine_line()
    table = format_layouts(rows)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(dict(machine=where, rows=rows), indent=2))
    (out / "results.md").write_text(f"{where}\n\n{table}\n")
    return f"{len(configs)} members, batch {config.train.batch_size}, {where}\n{table}"
