"""Test-wide settings: strict dtype promotion, a bounded hypothesis budget, a float dtype fixture.

Rank promotion is deliberately left at jax's default ("allow"): conv2d adds its bias as
`y_HWO + b_O`, broadcasting a rank-1 (O,) onto a rank-3 (H', W', O) array, which is the
textbook `+ b[o]` of the equation and what Flax does too. With
`jax.numpy_rank_promotion("raise")` every biased conv (and so every model) raises, so that
setting would test a different library, not this one.
"""

from __future__ import annotations

import contextlib

import jax
import numpy as np
import pytest
from hypothesis import settings

from cnnjax import runtime

# The kernels and allocator the experiment entry points run with (cnnjax.runtime), set before
# any test starts JAX's backends.
runtime.tune()

# 25 examples per property keeps the whole suite fast on a 2-core machine; every new shape is a
# fresh XLA compile, so a per-example deadline would only measure the compiler.
settings.register_profile("cnnjax", max_examples=25, deadline=None, database=None)
settings.load_profile("cnnjax")


@pytest.fixture(autouse=True)
def strict_dtype_promotion():
    """No silent float32 -> float64 (or int -> float) promotion inside the library under test."""
    with jax.numpy_dtype_promotion("strict"):
        yield


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def float_dtype(request):
    """Run a test in float32 and in float64 (with x64 enabled only for the float64 run)."""
    dtype = request.param
    with jax.enable_x64(True) if dtype == np.float64 else contextlib.nullcontext():
        yield dtype
