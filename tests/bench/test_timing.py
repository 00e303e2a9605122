"""cnnjax.bench.timing: the timer calls a window 1 + repeats times and times each; rates and
compile time worked by hand."""

import time

import jax
import jax.numpy as jnp
import pytest

from cnnjax.bench import timing


def test_every_call_is_timed_and_the_first_apart():
    calls = []

    def window():
        calls.append(len(calls))
        time.sleep(0.05 if len(calls) == 1 else 0.01)  # the first call pays the warm-up
        return len(calls)

    timed = timing.time_windows(window, repeats=3)
    assert calls == [0, 1, 2, 3] and timed.result == 4
    assert len(timed.seconds) == 3 and all(0.01 <= s < 0.05 for s in timed.seconds)
    assert timed.first_s >= 0.05
    assert timing.compile_s(timed) == pytest.approx(timed.first_s - sorted(timed.seconds)[1])


def test_rates_by_hand():
    # 100 images in 1, 2 and 4 seconds: 100, 50, 25 img/s
    assert timing.rates(100, [2.0, 1.0, 4.0]) == dict(
        img_per_s=50.0, img_per_s_min=25.0, img_per_s_max=100.0
    )
    windows = timing.Windows(first_s=5.0, seconds=[1.0, 3.0, 2.0], result=None)
    assert timing.compile_s(windows) == 3.0  # 5 s less the median steady window, 2 s


def test_compile_seconds_gives_the_compiled_function():
    x = jnp.arange(3.0)
    compiled, seconds = timing.compile_seconds(jax.jit(lambda v: 2 * v), x)
    assert seconds > 0
    assert compiled(x).tolist() == [0.0, 2.0, 4.0]
