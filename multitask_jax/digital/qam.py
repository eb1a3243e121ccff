"""Gray-mapped QAM (3GPP TS 38.211 5.1: QPSK, 16QAM, 64QAM) with exact and max-log soft demapping.

Constellations have unit average energy E|s|^2 = 1, so the channel SNR of `casc_jax.channel` is
Es/N0 and the noise is CN(0, sigma^2) with sigma^2 = 10^(-SNR/10). Bits b_0 .. b_{Q-1} of a symbol:
even bits set the in-phase amplitude, odd bits the quadrature one (38.211's formulas), so the
constellation is a product of two Gray-labelled sqrt(M)-PAMs and the bit LLRs of each component
depend on that component alone; the demappers use this (exactly, not as an approximation).

LLR convention: L = log P(b = 0 | y) / P(b = 1 | y) (positive means 0), as the LDPC decoder expects.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from casc_jax import channel as ch
from multitask_jax.digital.budget import bits_per_symbol

DEMAPPERS = ("exact", "maxlog")


@functools.cache
def pam_levels(bits_per_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(levels (L,), labels (L, m)) of the Gray PAM along one axis, before normalisation.

    38.211: v = 1 - 2 c_{m-1}; then v = (1 - 2 c_k) (2^(m-1-k) - v) for k = m-2 .. 0.
    """
    m = bits_per_dim
    labels = (np.arange(2**m)[:, None] >> np.arange(m - 1, -1, -1)) & 1
    v = 1.0 - 2.0 * labels[:, m - 1]
    for k in range(m - 2, -1, -1):
        v = (1.0 - 2.0 * labels[:, k]) * (2.0 ** (m - 1 - k) - v)
    return v, labels


def _scale(qm: int) -> float:
    """1 / sqrt(E|s|^2) of the unnormalised constellation: sqrt(2), sqrt(10), sqrt(42)."""
    levels, _ = pam_levels(qm // 2)
    return float(np.sqrt(2.0 * np.mean(levels**2)))


def constellation(modulation: str) -> tuple[np.ndarray, np.ndarray]:
    """(points (M,) complex, bits (M, Q)) with label index sum_i b_i 2^(Q-1-i); unit average energy."""
    qm = bits_per_symbol(modulation)
    bits = (np.arange(2**qm)[:, None] >> np.arange(qm - 1, -1, -1)) & 1
    levels, _ = pam_levels(qm // 2)
    weights = 2 ** np.arange(qm // 2 - 1, -1, -1)
    pts = levels[bits[:, 0::2] @ weights] + 1j * levels[bits[:, 1::2] @ weights]
    return pts / _scale(qm), bits


def modulate(bits: jax.Array, modulation: str) -> jax.Array:
    """(B, n Q) bits in {0, 1} -> (B, n) unit-energy complex symbols."""
    qm = bits_per_symbol(modulation)
    if bits.shape[-1] % qm:
        raise ValueError(f"{bits.shape[-1]} bits per row is not a multiple of Q_m = {qm} for {modulation}")
    b = bits.reshape(*bits.shape[:-1], -1, qm).astype(jnp.int32)
    levels, _ = pam_levels(qm // 2)
    weights = 2 ** jnp.arange(qm // 2 - 1, -1, -1)
    i_idx = jnp.sum(b[..., 0::2] * weights, axis=-1)
    q_idx = jnp.sum(b[..., 1::2] * weights, axis=-1)
    lv = jnp.asarray(levels / _scale(qm), jnp.float32)
    return jax.lax.complex(lv[i_idx], lv[q_idx])


def demap(y: jax.Array, noise_var: jax.Array, modulation: str, method: str = "exact") -> jax.Array:
    """Bit LLRs from equalised symbols.

    y: (B, n) complex, y = s + w with w ~ CN(0, noise_var); noise_var broadcastable to (B, n).
    method: 'exact' (log-sum-exp over the constellation) or 'maxlog' (nearest point only).
    Returns (B, n Q) float32 LLRs in the bit order of `modulate`.
    """
    if method not in DEMAPPERS:
        raise ValueError(f"unknown demapper {method!r}; choose one of {DEMAPPERS}")
    qm = bits_per_symbol(modulation)
    m = qm // 2
    levels, labels = pam_levels(m)
    lv = jnp.asarray(levels / _scale(qm), jnp.float32)
    is_one = jnp.asarray(labels.T == 1)  # (m, L)
    var = jnp.broadcast_to(jnp.asarray(noise_var, jnp.float32), y.shape)[..., None]
    reduce = jax.nn.logsumexp if method == "exact" else jnp.max

    def per_axis(u):  # u: (B, n) real -> (B, n, m) LLRs
        metric = -jnp.square(u[..., None] - lv) / var  # (B, n, L): -|y - s|^2 / sigma^2 along this axis
        metric = metric[..., None, :]  # (B, n, 1, L)
        zero = reduce(jnp.where(is_one, -jnp.inf, metric), axis=-1)
        one = reduce(jnp.where(is_one, metric, -jnp.inf), axis=-1)
        return zero - one

    llr_i, llr_q = per_axis(jnp.real(y)), per_axis(jnp.imag(y))
    out = jnp.stack([llr_i, llr_q], axis=-1)  # (B, n, m, 2): bit 2k is I's k-th, bit 2k+1 is Q's k-th
    return out.reshape(*y.shape[:-1], -1)


def transmit_symbols(
    key: jax.Array, s: jax.Array, snr_db: jax.Array | float, kind: str = "awgn", equalizer: str = "zf"
) -> tuple[jax.Array, jax.Array]:
    """Send QAM symbols s (B, n) through `casc_jax.channel`; return (y (B, n), noise_var (B, 1)).

    No power normalisation (the constellation has unit average energy). For Rayleigh block fading the
    receiver knows h; whatever the equaliser, y is returned scaled to the unbiased form y = s + w'
    with var(w') = sigma^2 / |h|^2 (zf: y / h; mmse: divided by its gain |h|^2 / (|h|^2 + sigma^2);
    none: divided by h), so the LLRs are exact for every equaliser.
    """
    x = ch.from_complex(s, (s.shape[0], 2 * s.shape[1]))
    batch = s.shape[0]
    snr = jnp.broadcast_to(jnp.asarray(snr_db, jnp.float32), (batch,))
    sigma2 = ch.noise_variance(snr)[:, None]
    if kind == "awgn":
        return ch.to_complex(ch.awgn(key, x, snr)), sigma2
    if kind != "rayleigh":
        raise ValueError(f"unknown channel {kind!r}; choose one of {ch.CHANNELS}")
    y, h = ch.rayleigh_with_gain(key, x, snr, equalizer)
    y, h = ch.to_complex(y), h[:, None]
    power = jnp.abs(h) ** 2
    gain = {"zf": jnp.ones_like(h), "mmse": power / (power + sigma2), "none": h}[equalizer]
    return y / gain, sigma2 / power
