"""Belief-propagation decoding of `multitask_jax.digital.ldpc.NRCode`: normalised / offset min-sum.

One jitted, batched function per (code, iterations, scale, offset): a flooding schedule inside a
`lax.while_loop` that stops when every block of the batch satisfies all parity checks or after
`iterations`. Messages live in the padded check-row layout of `NRCode.groups`, shape (B, R, d, Z)
per group; everything is a gather, a reduction or an elementwise op, vectorised over the batch,
the rows, the edges and the Z lifted copies (no scatter). A block whose decisions satisfy the
checks is frozen at that iteration; `ok` reports it, so a failed block is detected, not guessed.

Check update (min-sum): c2v = scale * max(min_{others} |v2c| - offset, 0) * prod_{others} sign(v2c).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from multitask_jax.digital.ldpc import NRCode


class Decoded(NamedTuple):
    info: jax.Array  # (B, K') hard decisions on the information bits (uint8)
    ok: jax.Array  # (B,) parity checks satisfied
    iterations: jax.Array  # (B,) iterations until the checks held (iterations cap when never)
    llr: jax.Array  # (B, n_cols Z) posterior LLRs at the frozen iteration


def _check_update(v2c, valid, scale, offset):
    """v2c (R, d, Z, B), padding slots +inf -> c2v (R, d, Z, B), padding slots 0."""
    mag = jnp.abs(v2c)
    neg = v2c < 0
    parity = jnp.sum(neg, axis=1, keepdims=True) % 2
    sign = jnp.where(jnp.logical_xor(parity == 1, neg), -scale, scale)
    first = jnp.argmin(mag, axis=1, keepdims=True)
    is_first = jnp.arange(mag.shape[1])[None, :, None, None] == first
    min1 = jnp.min(mag, axis=1, keepdims=True)
    min2 = jnp.min(jnp.where(is_first, jnp.inf, mag), axis=1, keepdims=True)
    m = jnp.where(is_first, min2, min1)
    if offset:
        m = jnp.maximum(m - offset, 0.0)
    return jnp.where(valid[:, :, None, None], sign * m, 0.0)


@functools.cache
def decoder(code: NRCode, iterations: int = 20, scale: float = 0.75, offset: float = 0.0, early_stop: bool = True):
    """Jitted `decode(llr (B, n_cols Z)) -> Decoded` for `code` (see `ldpc.rate_recover` for llr).

    early_stop=False always runs `iterations` (fixed latency; blocks still freeze once their checks hold).
    Inside, the batch is the last (contiguous) axis: every gather then moves whole rows of B values.
    """
    groups = [(jnp.asarray(i), jnp.asarray(v)) for i, v in code.dec_groups]
    var_index = [jnp.asarray(v) for v in code.var_index]
    bit_order, codeword_order = jnp.asarray(code.bit_order), jnp.asarray(np.argsort(code.bit_order))
    z = code.z

    def hard_ok(post):  # post (N, B) -> (B,)
        bits = jnp.pad((post < 0).astype(jnp.int32), ((0, z), (0, 0)))
        return jnp.all(jnp.stack([jnp.all(jnp.sum(jnp.take(bits, i, axis=0), axis=1) % 2 == 0, axis=(0, 1))
                                  for i, _ in groups]), axis=0)

    def posterior(llr, c2v):
        flat = jnp.concatenate([m.reshape(-1, llr.shape[1]) for m in c2v] + [jnp.zeros_like(llr[:1])], axis=0)
        sums = [jnp.sum(jnp.take(flat, v, axis=0), axis=1).reshape(-1, llr.shape[1]) for v in var_index]
        return llr + jnp.concatenate(sums, axis=0)

    @jax.jit
    def decode(llr):
        llr = jnp.take(llr.astype(jnp.float32), bit_order, axis=1).T  # (N, B), internal bit order
        batch = llr.shape[1]
        c2v0 = tuple(jnp.zeros((*v.shape, z, batch), jnp.float32) for _, v in groups)
        ok0 = hard_ok(llr)

        def cond(state):
            return (state[0] < iterations) & ~(early_stop & jnp.all(state[3]))

        def body(state):
            it, c2v, post, done, out, used = state
            ext = jnp.pad(post, ((0, z), (0, 0)), constant_values=jnp.inf)
            c2v = tuple(_check_update(jnp.take(ext, i, axis=0) - m, v, scale, offset)
                        for (i, v), m in zip(groups, c2v))
            post = posterior(llr, c2v)
            ok = hard_ok(post)
            out = jnp.where(done, out, post)
            used = jnp.where(done, used, it + 1)
            return it + 1, c2v, post, done | ok, out, used

        state = (jnp.int32(0), c2v0, llr, ok0, llr, jnp.zeros((batch,), jnp.int32))
        _, _, _, done, out, used = jax.lax.while_loop(cond, body, state)
        out = jnp.take(out, codeword_order, axis=0).T
        return Decoded((out[:, : code.k] < 0).astype(jnp.uint8), done, used, out)

    return decode
