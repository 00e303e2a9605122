"""Test-wide settings: strict dtype promotion, a bounded hypothesis budget, a float dtype fixture.

Rank promotion is deliberately left at jax's default ("allow"): conv2d adds its bias as
`y_HWO + b_O`, broadcasting a rank-1 (O,) onto a rank-3 (H', W', O) array, which is the
textbook `+ b[o]` of the equation and what Flax does too. With
`jax.numpy_rank_promotion("raise")` every biased conv (and so every model) raises, so that
setting would test a different library, not this one.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os

import jax
import numpy as np
import pytest
from hypothesis import settings

from cnnjax import runtime
from tests import builders

# The kernels and allocator the experiment entry points run with (cnnjax.runtime), set before
# any test starts JAX's backends.
runtime.tune()

# 25 examples per property keeps the whole suite fast on a 2-core machine; every new shape is a
# fresh XLA compile, so a per-example deadline would only measure the compiler.
settings.register_profile("cnnjax", max_examples=25, deadline=None, database=None)
settings.load_profile("cnnjax")
CACHE_VARIABLE = "JAX_COMPILATION_CACHE_DIR"


@pytest.fixture(scope="session", autouse=True)
def shared_compilation_cache(tmp_path_factory):
    """The entry points the tests start as processes (as users run them) train the same small
    configs again and again: one persistent compilation cache for every process of the session,
    pytest-xdist's workers' included, so that a later process loads the programs an earlier one
    compiled (the same executables, so the same numbers) instead of compiling them anew. Only
    for child processes (the variable is read as JAX starts); this process compiles as usual."""
    shared = tmp_path_factory.getbasetemp()
    shared = shared.parent if shared.name.startswith("popen-gw") else shared  # xdist's workers
    before = os.environ.get(CACHE_VARIABLE)
    os.environ.setdefault(CACHE_VARIABLE, str(shared / "jax_compilation_cache"))
    yield
    if before is None:
        os.environ.pop(CACHE_VARIABLE, None)


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


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """Learnable 28x28 digits-to-be (class k lights band k) as IDX files, prepared with TFDS:
    (IDX source directory, TFDS directory), as builders.config_for takes them."""
    from cnnjax.training import data  # TFDS loads only for the tests that use this fixture

    root = tmp_path_factory.mktemp("data")
    source, tfds_dir = root / "idx", root / "tfds"
    source.mkdir()
    rng = np.random.default_rng(0)
    checksums = {}
    for split, n in (("train", builders.TRAIN_N), ("t10k", builders.TEST_N)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 80, (n, 28, 28))
        for k in range(10):
            images[labels == k, 2 * k + 4 : 2 * k + 6] += 170
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            raw = builders.idx_bytes(array)
            stem = f"{split}-{kind}-ubyte"
            (source / f"{stem}.gz").write_bytes(gzip.compress(raw, mtime=0))
            checksums[stem] = hashlib.sha256(raw).hexdigest()
    for split in ("train", "test"):
        data.load("mnist", split, data_dir=tfds_dir, source_dir=source, checksums=checksums)
    return source, tfds_dir
