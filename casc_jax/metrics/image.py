"""Pixel-space image metrics: MSE and PSNR.

Images are float arrays `(B, H, W, C)` in [-1, 1] (NHWC) unless stated, so the default dynamic range
of PSNR is 2. Both metrics reduce over every axis but the first and return one value per image.
"""

from __future__ import annotations

import jax.numpy as jnp


def _check_pair(x, y) -> None:
    if jnp.shape(x) != jnp.shape(y):
        raise ValueError(f"x and y must have the same shape, got {jnp.shape(x)} and {jnp.shape(y)}")
    if jnp.ndim(x) < 2:
        raise ValueError(f"expected a batch of images (B, H, W, C), got shape {jnp.shape(x)}")


def mse(x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """Per-image mean squared error.

    Args:
      x, y: `(B, ...)`, e.g. `(B, H, W, C)`.

    Returns:
      `(B,)` mean of `(x - y)^2` over all non-batch axes (float32 at least).
    """
    _check_pair(x, y)
    dtype = jnp.promote_types(jnp.result_type(x, y), jnp.float32)
    d = jnp.asarray(x, dtype) - jnp.asarray(y, dtype)
    return jnp.mean(jnp.square(d), axis=tuple(range(1, d.ndim)))


def psnr(x: jnp.ndarray, y: jnp.ndarray, data_range: float = 2.0) -> jnp.ndarray:
    """Per-image peak signal-to-noise ratio in dB: `10 log10(data_range^2 / MSE)`.

    Args:
      x, y: `(B, H, W, C)` images; `data_range` is max minus min of the pixel scale
        (2.0 for [-1, 1], 1.0 for [0, 1], 255.0 for uint8 values).

    Returns:
      `(B,)` PSNR in dB. Identical images (MSE = 0) give `+inf`; there is no cap, so average over
      a batch with care (e.g. report the PSNR of the mean MSE, or drop the infinite entries).
    """
    if data_range <= 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    err = mse(x, y)
    return 10.0 * jnp.log10(jnp.asarray(data_range, err.dtype) ** 2 / err)
