"""Wireless channel models shared by every system: power normalisation, AWGN, Rayleigh block fading.

The channel knows nothing about images. A channel input is any real array `x` of shape (B, ...);
its trailing elements are flattened and consecutive pairs of reals form one complex symbol
s_k = x_{2k} + j x_{2k+1}, so a sample of n reals occupies n / 2 channel uses.
SNR is given in dB, either one value for the batch or one per sample (B,).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import jax
import jax.numpy as jnp

CHANNELS = ("awgn", "rayleigh")
EQUALIZERS = ("zf", "mmse", "none")


def to_complex(x: jax.Array) -> jax.Array:
    """(B, ...) reals with an even number of elements per sample -> (B, n/2) complex symbols."""
    flat = x.reshape(x.shape[0], -1)
    if flat.shape[1] % 2:
        raise ValueError(f"a sample has {flat.shape[1]} reals; complex symbols need an even number")
    pairs = flat.reshape(flat.shape[0], -1, 2)
    return jax.lax.complex(pairs[..., 0], pairs[..., 1])


def from_complex(s: jax.Array, shape: Sequence[int]) -> jax.Array:
    """Inverse of `to_complex`: (B, k) complex -> real array of `shape`."""
    pairs = jnp.stack([jnp.real(s), jnp.imag(s)], axis=-1)
    return pairs.reshape(shape)


def normalize_power(x: jax.Array, power: float = 1.0) -> jax.Array:
    """Scale each sample so its average power per complex symbol is `power`.

    x: (B, ...) reals. For k = n/2 symbols: sum_k |s_k|^2 / k = power.
    """
    flat = x.reshape(x.shape[0], -1)
    num_symbols = flat.shape[1] / 2
    energy = jnp.sum(jnp.square(flat), axis=1, keepdims=True)
    scale = jnp.sqrt(power * num_symbols / jnp.maximum(energy, 1e-12))
    return (flat * scale).reshape(x.shape)


def noise_variance(snr_db: jax.Array) -> jax.Array:
    """sigma^2 of CN(0, sigma^2) for unit signal power: 10^(-SNR/10)."""
    return jnp.power(10.0, -jnp.asarray(snr_db, jnp.float32) / 10.0)


def _per_sample(value: jax.Array | float, batch: int) -> jax.Array:
    value = jnp.asarray(value, jnp.float32)
    if value.ndim == 0:
        return jnp.full((batch,), value)
    if value.shape != (batch,):
        raise ValueError(f"snr_db must be a scalar or have shape ({batch},), got {value.shape}")
    return value


def complex_noise(key: jax.Array, shape: Sequence[int], variance: jax.Array) -> jax.Array:
    """CN(0, variance) samples of `shape` (B, k); variance broadcast per sample (B,)."""
    kr, ki = jax.random.split(key)
    std = jnp.sqrt(variance / 2.0)[:, None]
    return jax.lax.complex(std * jax.random.normal(kr, shape), std * jax.random.normal(ki, shape))


def awgn(key: jax.Array, x: jax.Array, snr_db: jax.Array | float) -> jax.Array:
    """y = x + n with n ~ CN(0, 10^(-SNR/10)) per complex symbol (x assumed unit power)."""
    s = to_complex(x)
    sigma2 = noise_variance(_per_sample(snr_db, x.shape[0]))
    return from_complex(s + complex_noise(key, s.shape, sigma2), x.shape)


def rayleigh(
    key: jax.Array, x: jax.Array, snr_db: jax.Array | float, equalizer: str = "zf"
) -> jax.Array:
    """Rayleigh block fading y = h x + n, one h ~ CN(0, 1) per sample, known CSI at the receiver.

    equalizer: 'zf' (y / h), 'mmse' (conj(h) y / (|h|^2 + sigma^2)) or 'none' (y as received).
    """
    return rayleigh_with_gain(key, x, snr_db, equalizer)[0]


def rayleigh_with_gain(
    key: jax.Array, x: jax.Array, snr_db: jax.Array | float, equalizer: str = "zf"
) -> tuple[jax.Array, jax.Array]:
    """`rayleigh` that also returns the fading gain h (B,) complex, for receivers that need the CSI
    (e.g. a soft demapper's post-equalisation noise variance). Same keys, same draw as `rayleigh`."""
    if equalizer not in EQUALIZERS:
        raise ValueError(f"unknown equalizer {equalizer!r}; choose one of {EQUALIZERS}")
    s = to_complex(x)
    batch = x.shape[0]
    sigma2 = noise_variance(_per_sample(snr_db, batch))
    key_h, key_n = jax.random.split(key)
    h = complex_noise(key_h, (batch, 1), jnp.ones((batch,)))
    y = h * s + complex_noise(key_n, s.shape, sigma2)
    if equalizer == "zf":
        y = y / h
    elif equalizer == "mmse":
        y = jnp.conj(h) * y / (jnp.abs(h) ** 2 + sigma2[:, None])
    return from_complex(y, x.shape), h[:, 0]


def transmit(
    key: jax.Array,
    x: jax.Array,
    snr_db: jax.Array | float,
    kind: str = "awgn",
    equalizer: str = "zf",
    normalize: bool = True,
) -> jax.Array:
    """Power-normalise (optionally) and pass `x` (B, ...) through the channel `kind`."""
    if normalize:
        x = normalize_power(x)
    if kind == "awgn":
        return awgn(key, x, snr_db)
    if kind == "rayleigh":
        return rayleigh(key, x, snr_db, equalizer)
    raise ValueError(f"unknown channel {kind!r}; choose one of {CHANNELS}")


def sample_snr(key: jax.Array, batch: int, snrs_db: Sequence[float]) -> jax.Array:
    """Draw one SNR per sample uniformly from the set `snrs_db` (B,)."""
    return jax.random.choice(key, jnp.asarray(snrs_db, jnp.float32), (batch,))


# ----------------------------------------------------------------------------------------------
# Compression ratio accounting. CR = d / (2n): d reals (= d/2 channel uses) for n = H*W*3 source reals.


def source_size(image_shape: Sequence[int]) -> int:
    """n: the number of real source values of an (H, W, C) image."""
    return math.prod(image_shape)


def num_reals(cr: float | str | Fraction, image_shape: Sequence[int]) -> Fraction:
    """d = 2 n CR: the real channel-input length for compression ratio `cr`."""
    return 2 * source_size(image_shape) * parse_ratio(cr)


def num_channel_uses(cr: float | str | Fraction, image_shape: Sequence[int]) -> Fraction:
    """k = d / 2 = n CR complex symbols."""
    return num_reals(cr, image_shape) / 2


def compression_ratio(d: int, image_shape: Sequence[int]) -> Fraction:
    """CR = d / (2n) as an exact fraction."""
    return Fraction(d, 2 * source_size(image_shape))


def parse_ratio(cr: float | str | Fraction) -> Fraction:
    """Accept 1/48, '1/48', 0.0208333 or Fraction(1, 48)."""
    if isinstance(cr, str):
        cr = Fraction(cr.strip())
    frac = Fraction(cr).limit_denominator(100000)
    if not 0 < frac <= 1:
        raise ValueError(f"compression ratio must be in (0, 1], got {cr}")
    return frac


def condition_channels(
    cr: float | str | Fraction, image_shape: Sequence[int], latent_hw: Sequence[int]
) -> int:
    """L such that an (h, w, L) condition carries exactly d = 2 n CR reals.

    Raises ValueError naming the nearest realisable ratios when no integer L fits.
    """
    frac = parse_ratio(cr)
    cells = math.prod(latent_hw)
    d = 2 * source_size(image_shape) * frac
    channels = d / cells
    if channels.denominator == 1 and channels >= 1:
        return int(channels)
    lo = max(1, math.floor(channels))
    options = sorted({lo, lo + 1} if channels > 1 else {1})
    valid = ", ".join(
        f"1/{int(1 / r)}" if r.numerator == 1 else str(r)
        for r in (compression_ratio(L * cells, image_shape) for L in options)
    )
    raise ValueError(
        f"compression ratio {frac} needs d = {float(d):g} reals, which no integer number of condition "
        f"channels L on the {tuple(latent_hw)} latent grid realises (d must be a multiple of {cells}); "
        f"nearest valid ratios: {valid}"
    )
