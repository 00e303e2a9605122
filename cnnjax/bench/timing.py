"""The one timer: a window of work run once to warm up and `repeats` times more, its compile
time apart, and the images per second it did.

A window is a function that does a fixed amount of work and waits for it to finish (a jitted
call's result must be blocked on inside it, or the timer measures only the dispatch).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np


class Windows(NamedTuple):
    """Seconds of the first call (compilation, warm-up, first-call allocations), of each of the
    timed calls after it, and the last call's result."""

    first_s: float
    seconds: list[float]
    result: Any


def compile_seconds(jitted, *args) -> tuple[Any, float]:
    """`jitted` lowered and compiled for `args`, and the seconds that took.

    Returns:
        (the compiled function, seconds).
    """
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - start


def time_windows(window: Callable[[], Any], repeats: int) -> Windows:
    """Calls `window` 1 + `repeats` times, timing each call with a wall clock.

    Args:
        window: a call that does one window of work and waits for it.
        repeats: timed calls after the first.
    Returns:
        Windows(first_s, seconds: `repeats` floats, result of the last call).
    """
    seconds = []
    for _ in range(1 + repeats):
        start = time.perf_counter()
        result = window()
        seconds.append(time.perf_counter() - start)
    return Windows(seconds[0], seconds[1:], result)


def rates(work: int, seconds) -> dict:
    """Images per second of windows of `work` images each: the median, min and max.

    Returns:
        {"img_per_s", "img_per_s_min", "img_per_s_max"} (floats).
    """
    per_s = work / np.asarray(seconds)
    return dict(
        img_per_s=float(np.median(per_s)),
        img_per_s_min=float(per_s.min()),
        img_per_s_max=float(per_s.max()),
    )


def compile_s(windows: Windows) -> float:
    """The first call's seconds less a steady call's (the median): tracing, compilation and
    first-call set-up."""
    return windows.first_s - float(np.median(windows.seconds))
