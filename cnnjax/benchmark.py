"""Benchmarks: steady-state training throughput measured side by side in one process.

Timings exclude compilation (reported apart) and a warm-up; each figure is the median of
`repeats` timed windows with the min and max beside it. Inputs are random uint8 images of the
real shape: throughput does not depend on pixel values. Legend: M members, S steps, B batch.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import models, population, train


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


def sequential(configs, spec, images_NHWC, labels_N, idx_MSB, repeats: int) -> dict:
    """M solo runs one after another, each with its own compiled step (its numbers are
    constants in its program), as `python -m experiments.train` runs them."""
    steps_per_epoch = images_NHWC.shape[0] // configs[0].train.batch_size
    compiled, states, compile_s = [], [], 0.0
    for config, idx_SB in zip(configs, idx_MSB, strict=True):
        optimizer = train.make_optimizer(config.optim, steps_per_epoch, config.train.epochs)
        state = train.init_state(config.seed, spec, images_NHWC.shape[1:], optimizer)
        step = jax.jit(functools.partial(train.train_step, spec=spec, optimizer=optimizer,
                                         config=config), donate_argnums=0)  # fmt: skip
        fn, seconds = _compile(step, state, images_NHWC, labels_N, idx_SB[0])
        compiled.append(fn)
        states.append(state)
        compile_s += seconds

    def window():
        for k, fn in enumerate(compiled):
            for idx_B in idx_MSB[k]:
                states[k], metrics = fn(states[k], images_NHWC, labels_N, idx_B)
            jax.block_until_ready(metrics)

    return dict(compile_s=compile_s, seconds=_windows(window, repeats))


def together(configs, spec, images_NHWC, labels_N, idx_MSB, repeats: int, layout: str) -> dict:
    """The same M members as one population program (cnnjax.population, `layout`)."""
    steps_per_epoch = images_NHWC.shape[0] // configs[0].train.batch_size
    pop = population.init(configs, spec, images_NHWC.shape[1:], steps_per_epoch)
    step = population.make_step(spec, configs[0], steps_per_epoch, layout)
    fn, compile_s = _compile(step, pop, images_NHWC, labels_N, idx_MSB[:, 0])
    holder = [pop]

    def window():
        for s in range(idx_MSB.shape[1]):
            holder[0], metrics = fn(holder[0], images_NHWC, labels_N, idx_MSB[:, s])
        jax.block_until_ready(metrics)

    return dict(compile_s=compile_s, seconds=_windows(window, repeats))


def population_vs_sequential(configs, *, steps: int, repeats: int, layouts, examples=60000):
    """Rows (a dict per method: compile_s, img_per_s median/min/max, ratio to sequential) for M
    members run sequentially and as one program in each of `layouts`."""
    config = configs[0]
    spec = models.SPECS[config.model.spec]
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (examples, 28, 28, 1), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, examples, dtype=np.int32))
    idx_MSB = jnp.asarray(rng.integers(0, examples, (len(configs), steps, config.train.batch_size),
                                       dtype=np.int32))  # fmt: skip
    measured = {"sequential": sequential(configs, spec, images, labels, idx_MSB, repeats)}
    for layout in layouts:
        measured[f"population ({layout})"] = together(configs, spec, images, labels, idx_MSB,
                                                      repeats, layout)  # fmt: skip
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
