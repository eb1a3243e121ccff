"""The separated digital link: image -> JPEG -> 5G NR LDPC -> scrambled Gray QAM -> channel -> back.

Per image, within `Budget`: E = Q_m * k coded bits (k = budget channel uses), S = floor(R E) source
bits. The payload is segmented as 38.212 5.2.2 does (C = ceil(S / K_cb) blocks, K_cb = 8448 for BG1,
3840 for BG2, base graph chosen by 7.2.2), each block carrying K' = floor(S / C) bits and E_r =
Q_m floor(k / C) coded bits; at most C - 1 symbols of the budget stay unused (`plan` says how many).
No CRC is attached: a block counts as failed when its LDPC parity checks do not hold after decoding,
and an image fails when any of its blocks fails or its JPEG does not decode. Failures are flags and
counts; a failed image is None, never a guess. Scrambling: coded bits are XORed with a fixed
pseudo-random sequence before modulation (the role of 38.211's Gold-sequence scrambler), so the
constellation is used uniformly whatever the JPEG bytes are. One fading gain per image (block fading).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from multitask_jax.digital import jpeg, ldpc, qam
from multitask_jax.digital.budget import Budget, bits_per_symbol
from multitask_jax.digital.decoder import decoder

SCRAMBLE_SEED = 38211


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one image's budget is spent."""

    blocks: int  # C
    k: int  # K' per block
    e: int  # E_r per block
    code: ldpc.NRCode
    channel_uses: int  # symbols sent per image
    unused_channel_uses: int

    @property
    def source_bits(self) -> int:
        return self.blocks * self.k


@dataclasses.dataclass(frozen=True)
class LinkResult:
    images: list  # per image: (H, W, 3) uint8, or None when it failed
    ok: np.ndarray  # (N,) image delivered
    quality: np.ndarray  # (N,) JPEG quality sent (0: nothing fits the budget)
    jpeg_bits: np.ndarray  # (N,) JPEG file size in bits
    block_ok: np.ndarray  # (N, C) LDPC parity satisfied per block
    block_errors: int  # failed blocks
    image_failures: int  # images not delivered


@dataclasses.dataclass(frozen=True)
class DigitalLink:
    """JPEG + LDPC + QAM at a fixed code rate and modulation, within `budget`."""

    budget: Budget = Budget()
    modulation: str = "16qam"
    code_rate: float = 0.5
    channel: str = "awgn"
    equalizer: str = "zf"
    demapper: str = "exact"
    iterations: int = 20
    scale: float = 0.75
    offset: float = 0.0

    @functools.cached_property
    def plan(self) -> Plan:
        qm = bits_per_symbol(self.modulation)
        uses = self.budget.digital_channel_uses(self.modulation)
        s = self.budget.source_bits(self.modulation, self.code_rate)
        bg = ldpc.select_base_graph(s, self.code_rate)
        c = math.ceil(s / ldpc.MAX_K[bg])
        k, e = s // c, qm * (uses // c)
        code = ldpc.make_code(k, e, qm=qm, bg=bg)
        return Plan(c, k, e, code, c * (uses // c), uses - c * (uses // c))

    def _scrambler(self, n: int) -> jax.Array:
        return jnp.asarray(np.random.default_rng(SCRAMBLE_SEED).integers(0, 2, n, dtype=np.int32))

    @functools.cached_property
    def _tx(self):
        p = self.plan
        scr = self._scrambler(p.blocks * p.e)

        @jax.jit
        def tx(info):  # (N C, K') -> (N, symbols)
            bits = ldpc.rate_match(p.code, ldpc.encode(p.code, info)).reshape(-1, p.blocks * p.e)
            return qam.modulate(bits ^ scr, self.modulation)

        return tx

    @functools.cached_property
    def _rx(self):
        p = self.plan
        sign = 1.0 - 2.0 * self._scrambler(p.blocks * p.e).astype(jnp.float32)
        decode = decoder(p.code, self.iterations, self.scale, self.offset)

        @jax.jit
        def rx(key, symbols, snr_db):
            y, var = qam.transmit_symbols(key, symbols, snr_db, self.channel, self.equalizer)
            llr = qam.demap(y, var, self.modulation, self.demapper) * sign
            out = decode(ldpc.rate_recover(p.code, llr.reshape(-1, p.e)))
            return out.info, out.ok

        return rx

    def source_encode(self, images: np.ndarray) -> tuple[np.ndarray, list[bytes]]:
        """(N, H, W, 3) uint8 -> (qualities (N,), JPEG files) at the highest quality that fits."""
        fits = [jpeg.fit_quality(jpeg.to_uint8(im), self.plan.source_bits) for im in images]
        return np.array([q for q, _ in fits]), [d for _, d in fits]

    def transmit(self, key: jax.Array, images: np.ndarray, snr_db: float | np.ndarray) -> LinkResult:
        """Send each image (N, H, W, 3) once at `snr_db` (scalar or (N,)) and decode it."""
        p = self.plan
        quality, files = self.source_encode(images)
        info = np.stack([jpeg.bytes_to_bits(f, p.source_bits) for f in files]).reshape(-1, p.k)
        symbols = self._tx(jnp.asarray(info))
        bits, ok = self._rx(key, symbols, jnp.broadcast_to(jnp.asarray(snr_db, jnp.float32), (len(images),)))
        bits = np.asarray(bits).reshape(len(images), -1)
        block_ok = np.asarray(ok).reshape(len(images), p.blocks)
        out, delivered = [], np.zeros(len(images), bool)
        for i, im in enumerate(images):
            dec = None
            if quality[i] > 0 and block_ok[i].all():
                dec = jpeg.decode(jpeg.bits_to_bytes(bits[i]), im.shape)
            out.append(dec)
            delivered[i] = dec is not None
        return LinkResult(
            images=out,
            ok=delivered,
            quality=quality,
            jpeg_bits=np.array([8 * len(f) for f in files]),
            block_ok=block_ok,
            block_errors=int((~block_ok).sum()),
            image_failures=int((~delivered).sum()),
        )
