"""Training-time augmentation, inside the jitted step, one draw per example: random translations
(zero fill), left-right flips and random erasing (Zhong et al. 2020, "Random Erasing Data
Augmentation", AAAI). Legend: x_BHWC a float batch in [0, 1]."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# Random erasing's rectangle (the paper's defaults): its area a fraction of the image's, drawn
# uniformly from ERASE_AREA, and its aspect ratio (height / width) log-uniformly from
# ERASE_RATIO, symmetric about 1.
ERASE_AREA, ERASE_RATIO = (0.02, 0.4), (0.3, 1 / 0.3)


def augment(x_BHWC, key, *, shift: int, flip: bool, erase: float = 0.0):
    """Random translations by up to `shift` pixels (zero fill), left-right flips with
    probability 1/2 if `flip`, then with probability `erase` a random rectangle of each image
    replaced by uniform noise (`random_erasing`). The translations and flips draw from key's
    split in two, erasing from fold_in(key, 2), so turning erasing on leaves them as they were."""
    if shift == 0 and not flip and erase == 0:
        return x_BHWC
    b, h, w, _ = x_BHWC.shape
    shift_key, flip_key = jax.random.split(key)
    if shift:
        offsets = jax.random.randint(shift_key, (b, 2), 0, 2 * shift + 1)
        padded = jnp.pad(x_BHWC, ((0, 0), (shift, shift), (shift, shift), (0, 0)))
        crop = jax.vmap(
            lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, img.shape[2]))
        )
        x_BHWC = crop(padded, offsets)
    if flip:
        flips = jax.random.bernoulli(flip_key, 0.5, (b, 1, 1, 1))
        x_BHWC = jnp.where(flips, x_BHWC[:, :, ::-1], x_BHWC)
    if erase:
        x_BHWC = random_erasing(x_BHWC, jax.random.fold_in(key, 2), erase)
    return x_BHWC


def random_erasing(x_BHWC, key, probability: float):
    """Each image, with `probability`, has a rectangle of uniform noise in [0, 1): area S_e = s
    H W with s ~ U(ERASE_AREA), aspect r ~ logU(ERASE_RATIO), height round(sqrt(S_e r)) and
    width round(sqrt(S_e / r)), each clipped to the image, its top-left corner uniform among
    the positions where it fits. (The paper redraws a rectangle that does not fit; clipping
    keeps the step free of loops, and erases a little less of the tall and wide draws.)"""
    b, h, w, _ = x_BHWC.shape
    keys = jax.random.split(key, 6)
    area = jax.random.uniform(keys[0], (b,), minval=ERASE_AREA[0], maxval=ERASE_AREA[1]) * (h * w)
    log_ratio = [math.log(r) for r in ERASE_RATIO]
    ratio = jnp.exp(jax.random.uniform(keys[1], (b,), minval=log_ratio[0], maxval=log_ratio[1]))
    size_h = jnp.clip(jnp.round(jnp.sqrt(area * ratio)), 1, h)
    size_w = jnp.clip(jnp.round(jnp.sqrt(area / ratio)), 1, w)
    top = jnp.floor(jax.random.uniform(keys[2], (b,)) * (h - size_h + 1))
    left = jnp.floor(jax.random.uniform(keys[3], (b,)) * (w - size_w + 1))
    rows = jnp.arange(h, dtype=top.dtype)[None, :, None, None]
    cols = jnp.arange(w, dtype=left.dtype)[None, None, :, None]
    inside = (rows >= top[:, None, None, None]) & (rows < (top + size_h)[:, None, None, None])
    inside &= (cols >= left[:, None, None, None]) & (cols < (left + size_w)[:, None, None, None])
    erased = jax.random.bernoulli(keys[4], probability, (b, 1, 1, 1))
    noise = jax.random.uniform(keys[5], x_BHWC.shape, x_BHWC.dtype)
    return jnp.where(inside & erased, noise, x_BHWC)
