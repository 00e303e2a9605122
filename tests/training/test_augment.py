"""cnnjax.training.augment: translations and flips, and random erasing's rectangles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax.training import augment


def test_augment_keeps_shapes_and_is_identity_when_off():
    x = jax.random.uniform(jax.random.key(0), (8, 12, 12, 1))
    off = augment.augment(x, jax.random.key(1), shift=0, flip=False)
    np.testing.assert_array_equal(off, x)
    y = augment.augment(x, jax.random.key(1), shift=2, flip=True)
    assert y.shape == x.shape and not np.array_equal(y, x)
    np.testing.assert_array_equal(y, augment.augment(x, jax.random.key(1), shift=2, flip=True))
    flipped = augment.augment(x, jax.random.key(1), shift=0, flip=True)
    for a, b in zip(flipped, x, strict=True):  # each example is itself or its mirror image
        assert np.array_equal(a, b) or np.array_equal(a, b[:, ::-1])


def _rectangle(changed_HW):
    """(top, bottom, left, right) of the changed pixels, which must fill that rectangle."""
    rows, cols = np.nonzero(changed_HW)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    assert changed_HW[top:bottom, left:right].all() and changed_HW.sum() == (bottom - top) * (
        right - left
    )
    return top, bottom, left, right


def test_erasing_replaces_one_rectangle_of_each_image_by_noise():
    h, w = 28, 28
    x = jnp.full((256, h, w, 1), -1.0)  # outside [0, 1): every erased pixel shows
    y = np.asarray(augment.random_erasing(x, jax.random.key(3), 1.0))
    areas, ratios = [], []
    for image in y[..., 0]:
        top, bottom, left, right = _rectangle(image != -1.0)
        inside = image[top:bottom, left:right]
        assert inside.min() >= 0.0 and inside.max() < 1.0  # uniform noise
        areas.append((bottom - top) * (right - left) / (h * w))
        ratios.append((bottom - top) / (right - left))
    lo, hi = augment.ERASE_AREA
    # rounding the sides moves an area by up to a side's length (1 / 28 of the image per px)
    assert lo - 2 / h <= min(areas) and max(areas) <= hi + 2 / h
    assert np.mean(areas) == pytest.approx((lo + hi) / 2, abs=0.03)  # uniform area fractions
    assert min(ratios) < 0.6 and max(ratios) > 1.7  # tall and wide ones


def test_erasing_with_probability_zero_or_a_half():
    x = jax.random.uniform(jax.random.key(0), (400, 12, 12, 1))
    np.testing.assert_array_equal(augment.random_erasing(x, jax.random.key(1), 0.0), x)
    half = np.asarray(augment.random_erasing(x, jax.random.key(1), 0.5))
    erased = np.mean([not np.array_equal(a, b) for a, b in zip(half, x, strict=True)])
    assert erased == pytest.approx(0.5, abs=0.08)  # 400 draws: std 0.025


def test_turning_erasing_on_keeps_the_shifts_and_flips():
    """Erasing draws from its own key: the shifted and flipped batch is the one drawn without
    it, then erased."""
    x, key = jax.random.uniform(jax.random.key(0), (16, 12, 12, 1)), jax.random.key(5)
    plain = augment.augment(x, key, shift=2, flip=True)
    erased = augment.augment(x, key, shift=2, flip=True, erase=0.5)
    want = augment.random_erasing(plain, jax.random.fold_in(key, 2), 0.5)
    np.testing.assert_array_equal(erased, want)
    assert not np.array_equal(erased, plain)
