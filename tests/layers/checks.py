"""Comparisons for the layer tests: the error of an array, or of a pytree, relative to the
reference's scale, max|a - b| / max|b| (elementwise relative error is meaningless at the zeros
gradients are full of); the layers' gradient checks themselves are cnnjax.gradcheck's."""

from __future__ import annotations

import jax
import numpy as np


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.max(np.abs(got - want), initial=0.0) / max(np.max(np.abs(want)), 1e-300))


def tree_err(got, want) -> float:
    assert jax.tree.structure(got) == jax.tree.structure(want), (got, want)
    leaves = zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)
    return max([rel_err(g, w) for g, w in leaves] or [0.0])
