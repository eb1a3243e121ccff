"""5G NR LDPC codes (3GPP TS 38.212 5.2.2, 5.3.2, 5.4.2): base graphs, lifting, encoder, rate matching.

A code `NRCode` is built once per (K', E): base graph BG1 (46 x 68) or BG2 (42 x 52), lifting size Z,
K = 22 Z or 10 Z systematic bits of which the last F = K - K' are filler bits (known zeros, never
sent), and only the parity rows the E transmitted bits reach (extension rows whose degree-1 parity
column is never sent carry no information, so encoder and decoder drop them). Rate matching follows
38.212 5.4.2 with rv = 0 and no limited buffer: the first 2Z systematic bits are punctured, fillers
are skipped, E bits are read from the circular buffer (repeating when E exceeds it), then the
row-column bit interleaver of width Q_m.

Layout: a parity check (row i, r) of the lifted H touches bit (col j, (r + V_ij) mod Z) for every
base-graph entry (i, j), V_ij = table shift mod Z (38.212: identity shifted right V times). The rows
are stored padded, in two groups (the 4 core rows, then the extension rows), with a dummy column
n_cols for padding slots; `NRCode.groups` holds per group the flat gather index (R, d, Z) into the
(n_cols + 1) x Z bit array, and its validity mask. The decoder (`multitask_jax.digital.decoder`) uses the
same layout. Tables: data/nr_bg{1,2}.txt, provenance in data/README.md.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

DATA = Path(__file__).parent / "data"
SET_BASES = (2, 3, 5, 7, 9, 11, 13, 15)  # lifting-size set iLS = index: Z = a * 2^j <= 384
BG_SHAPE = {1: (46, 68), 2: (42, 52)}
BG_INFO_COLS = {1: 22, 2: 10}
MAX_K = {1: 8448, 2: 3840}
FILLER_LLR = 1e9  # filler bits are known zeros  # largest K' per code block (38.212 5.2.2)


def lifting_sizes() -> list[int]:
    """All 51 lifting sizes Z of 38.212 Table 5.3.2-1, ascending."""
    return sorted(a << j for a in SET_BASES for j in range(8) if a << j <= 384)


def set_index(z: int) -> int:
    """iLS: the lifting-size set that contains Z."""
    for i, a in enumerate(SET_BASES):
        if z % a == 0 and (z // a) & (z // a - 1) == 0:
            return i
    raise ValueError(f"Z = {z} is not a 5G NR lifting size; choose one of {lifting_sizes()}")


@functools.cache
def base_graph(bg: int) -> np.ndarray:
    """(entries, 10) int array: row, col, shift for iLS = 0..7 (38.212 Tables 5.3.2-2/3)."""
    if bg not in BG_SHAPE:
        raise ValueError(f"base graph must be 1 or 2, got {bg}")
    table = np.loadtxt(DATA / f"nr_bg{bg}.txt", dtype=np.int64, comments="#")
    table.setflags(write=False)
    return table


def select_base_graph(payload_bits: int, code_rate: float) -> int:
    """38.212 7.2.2: BG2 if A <= 292, or A <= 3824 and R <= 0.67, or R <= 0.25; else BG1."""
    a = payload_bits
    return 2 if a <= 292 or (a <= 3824 and code_rate <= 0.67) or code_rate <= 0.25 else 1


def info_columns(bg: int, k: int) -> int:
    """K_b of 38.212 5.2.2: 22 for BG1; 10, 9, 8 or 6 for BG2 by block size."""
    if bg == 1:
        return 22
    return 10 if k > 640 else 9 if k > 560 else 8 if k > 192 else 6


def lifting_size(bg: int, k: int) -> int:
    """The smallest Z with K_b Z >= K'."""
    kb = info_columns(bg, k)
    for z in lifting_sizes():
        if kb * z >= k:
            return z
    raise ValueError(f"K' = {k} exceeds base graph {bg}'s largest block ({MAX_K[bg]}); segment the payload")


@dataclasses.dataclass(frozen=True, eq=False)
class NRCode:
    """One rate-matched 5G NR LDPC code; build it with `make_code`. Identity-hashed: a jit static argument."""

    bg: int
    z: int
    k: int  # K': information bits per block
    e: int  # coded bits sent per block
    qm: int  # bits per QAM symbol (bit interleaver width)
    n_rows: int  # parity rows used
    groups: tuple  # per group: (gather index (R, d, Z), valid (R, d)); core rows first
    core_plan: tuple  # (b, steps): p0 = roll(sum of core lambdas, b); steps (target, row, [(col, V)], V_t)
    tx_index: np.ndarray  # (E,) codeword position of each transmitted bit
    rx_index: np.ndarray  # (reps, n_cols Z) position in [llr, 0] of each codeword bit's copies
    var_index: tuple  # decoder: per degree bucket (n_b, d_b, Z) flat slot index of each bit's edges
    bit_order: np.ndarray  # decoder: codeword position of each internal bit position
    dec_groups: tuple  # decoder: `groups` indexing the internal bit order

    @property
    def kb(self) -> int:
        return BG_INFO_COLS[self.bg]

    @property
    def n_cols(self) -> int:
        return self.kb + self.n_rows

    @property
    def n(self) -> int:
        """Mother codeword length kept: n_cols Z (punctured and filler bits included)."""
        return self.n_cols * self.z

    @property
    def rate(self) -> float:
        return self.k / self.e

    @property
    def filler(self) -> tuple[int, int]:
        return self.k, self.kb * self.z

    def __repr__(self):
        return f"NRCode(BG{self.bg}, Z={self.z}, K'={self.k}, E={self.e}, R={self.rate:.3f}, rows={self.n_rows})"


def _edges(bg: int, z: int, n_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = base_graph(bg)
    t = t[t[:, 0] < n_rows]
    return t[:, 0], t[:, 1], t[:, 2 + set_index(z)] % z


def _group(rows, cols, shifts, members, n_cols, z):
    """Padded layout for the rows `members`: gather index (R, d, Z) and valid mask (R, d)."""
    per_row = [np.flatnonzero(rows == i) for i in members]
    d = max(len(p) for p in per_row)
    col = np.full((len(members), d), n_cols)
    shift = np.zeros((len(members), d), np.int64)
    for r, p in enumerate(per_row):
        col[r, : len(p)], shift[r, : len(p)] = cols[p], shifts[p]
    index = col[..., None] * z + (np.arange(z) + shift[..., None]) % z
    return index, col < n_cols


def _core_plan(rows, cols, shifts, kb):
    """Double-diagonal structure of the 4 x 4 core: check it, and plan p0 .. p3 (38.212 5.3.2)."""
    core = {(i, j - kb): v for i, j, v in zip(rows, cols, shifts) if i < 4 and kb <= j < kb + 4}
    counts = {j: [v for (i, jj), v in core.items() if jj == j] for j in range(4)}
    odd = [j for j, vs in counts.items() if len(vs) % 2]
    if len(odd) != 1 or len(counts[odd[0]]) != 3:
        raise ValueError("base graph core is not double-diagonal; the table file is corrupt")
    first = odd[0]
    vs = counts[first]
    single = [v for v in vs if vs.count(v) % 2][0]  # the shift not cancelled in the sum of the 4 rows
    for j, v in counts.items():
        if j != first and (len(v) != 2 or v[0] != v[1]):
            raise ValueError("base graph core is not double-diagonal; the table file is corrupt")
    known, steps = {first}, []
    while len(known) < 4:
        for i in range(4):
            unknown = [j for (ii, j) in core if ii == i and j not in known]
            if len(unknown) == 1:
                t = unknown[0]
                terms = tuple((kb + j, core[(i, j)]) for (ii, j) in core if ii == i and j in known)
                steps.append((kb + t, i, terms, core[(i, t)]))
                known.add(t)
                break
        else:
            raise ValueError("base graph core cannot be solved row by row; the table file is corrupt")
    return (kb + first, single), tuple(steps)


def make_code(k: int, e: int, qm: int = 2, bg: int | None = None) -> NRCode:
    """The code for K' information bits sent as E coded bits (E a multiple of Q_m)."""
    if e % qm:
        raise ValueError(f"E = {e} coded bits is not a multiple of Q_m = {qm}; round E down to a multiple")
    if not 0 < k < e:
        raise ValueError(f"need 0 < K' < E, got K' = {k}, E = {e}")
    bg = select_base_graph(k, k / e) if bg is None else bg
    if k > MAX_K[bg]:
        raise ValueError(f"K' = {k} exceeds base graph {bg}'s largest block ({MAX_K[bg]}); segment the payload")
    z = lifting_size(bg, k)
    kb, mb = BG_INFO_COLS[bg], BG_SHAPE[bg][0]
    filler = kb * z - k
    if k <= 2 * z:
        raise ValueError(f"K' = {k} is not above the 2Z = {2 * z} punctured bits; use a larger block")
    n_rows = int(np.clip(math.ceil((e + filler) / z) + 2 - kb, 4, mb))
    rows, cols, shifts = _edges(bg, z, n_rows)
    n_cols = kb + n_rows
    groups = tuple(_group(rows, cols, shifts, m, n_cols, z) for m in (range(4), range(4, n_rows)) if len(m))
    if np.any(shifts[(rows >= 4) & (cols == kb + rows)] != 0):
        raise ValueError("extension rows must have an unshifted diagonal; the table file is corrupt")
    plan = _core_plan(rows, cols, shifts, kb)
    # Rate matching: circular buffer = bits 2Z.. of the codeword minus fillers; E bits; interleave by Q_m.
    pos = np.arange(2 * z, n_cols * z)
    pos = pos[(pos < k) | (pos >= kb * z)]
    sel = pos[np.arange(e) % len(pos)]  # E > len(pos) only when every row is used: repetition
    tx_index = sel.reshape(qm, e // qm).T.reshape(-1)  # f_{i + j Q} = e_{i E/Q + j}
    reps = -(-e // len(pos))
    rx_index = np.full((reps, n_cols * z), e)  # e = the zero slot appended to the received LLRs
    order = np.argsort(tx_index, kind="stable")
    ranked = tx_index[order]
    copy = np.arange(e) - np.searchsorted(ranked, ranked)  # 0 for a bit's first copy, 1 for its repeat, ...
    rx_index[copy, ranked] = order
    # Decoder's variable side: for bit (c, z'), the slots of its edges at position (z' - V) mod Z. Columns
    # are bucketed by degree (next power of two) to limit padding; the decoder keeps its bits in that
    # column order (`bit_order`: internal position -> codeword position) and `dec_groups` index it.
    slot_col = np.concatenate([g[0][..., 0].reshape(-1) // z for g in groups])
    slot_valid = np.concatenate([g[1].reshape(-1) for g in groups])
    slot_shift = np.concatenate([(g[0][..., 0] % z).reshape(-1) for g in groups])
    per_col = [np.flatnonzero((slot_col == c) & slot_valid) for c in range(n_cols)]
    bucket = np.array([1 << max(len(p) - 1, 0).bit_length() for p in per_col])
    col_order = np.argsort(bucket, kind="stable")
    var_index = []
    for d in np.unique(bucket):
        cols = col_order[bucket[col_order] == d]
        vi = np.full((len(cols), d, z), len(slot_col) * z)  # padding -> the zero slot appended to c2v
        for r, c in enumerate(cols):
            p = per_col[c]
            vi[r, : len(p)] = p[:, None] * z + (np.arange(z) - slot_shift[p][:, None]) % z
        var_index.append(vi)
    bit_order = (col_order[:, None] * z + np.arange(z)).reshape(-1)
    internal = np.concatenate([np.argsort(bit_order), np.arange(n_cols * z, (n_cols + 1) * z)])
    dec_groups = tuple((internal[i], v) for i, v in groups)
    return NRCode(bg, z, k, e, qm, n_rows, groups, plan, tx_index, rx_index, tuple(var_index), bit_order, dec_groups)


def _row_sums(code: NRCode, bits: jax.Array, group: int) -> jax.Array:
    """XOR over each row of group `group`: bits (B, (n_cols + 1) Z) -> (B, R, Z)."""
    index, _ = code.groups[group]
    return jnp.sum(jnp.take(bits, jnp.asarray(index), axis=1), axis=2) % 2


@functools.partial(jax.jit, static_argnums=0)
def encode(code: NRCode, info: jax.Array) -> jax.Array:
    """Systematic encoding: info (B, K') bits -> codeword (B, n_cols Z), H c = 0, fillers zero.

    Core parity p0..p3 by the double-diagonal solution, then each extension parity as the XOR of its row.
    """
    b, z = info.shape[0], code.z
    x = jnp.zeros((b, code.n_cols + 1, z), jnp.int32)
    x = x.at[:, : code.kb].set(jnp.pad(info.astype(jnp.int32), ((0, 0), (0, code.kb * z - code.k))).reshape(b, -1, z))
    lam = _row_sums(code, x.reshape(b, -1), 0)  # (B, 4, Z): info part of each core row (parity still 0)
    (first, shift0), steps = code.core_plan
    x = x.at[:, first].set(jnp.roll(jnp.sum(lam, axis=1) % 2, shift0, axis=-1))
    for target, row, terms, v_t in steps:
        acc = lam[:, row]
        for col, v in terms:
            acc = acc + jnp.roll(x[:, col], -v, axis=-1)
        x = x.at[:, target].set(jnp.roll(acc % 2, v_t, axis=-1))
    if len(code.groups) > 1:
        x = x.at[:, code.kb + 4 : code.n_cols].set(_row_sums(code, x.reshape(b, -1), 1))
    return x[:, : code.n_cols].reshape(b, -1)


@functools.partial(jax.jit, static_argnums=0)
def syndrome_ok(code: NRCode, bits: jax.Array) -> jax.Array:
    """(B,) True where the codeword bits (B, n_cols Z) satisfy every used parity check."""
    ext = jnp.pad(bits.astype(jnp.int32), ((0, 0), (0, code.z)))
    return jnp.all(jnp.stack([jnp.all(_row_sums(code, ext, g) == 0, axis=(1, 2)) for g in range(len(code.groups))]), 0)


@functools.partial(jax.jit, static_argnums=0)
def rate_match(code: NRCode, codeword: jax.Array) -> jax.Array:
    """(B, n_cols Z) -> (B, E) transmitted bits (puncture, skip fillers, repeat, interleave)."""
    return jnp.take(codeword, jnp.asarray(code.tx_index), axis=1)


@functools.partial(jax.jit, static_argnums=0)
def rate_recover(code: NRCode, llr: jax.Array) -> jax.Array:
    """(B, E) received LLRs -> (B, n_cols Z) decoder input: repeats added, punctured 0, fillers +big."""
    ext = jnp.pad(llr.astype(jnp.float32), ((0, 0), (0, 1)))
    out = jnp.sum(jnp.take(ext, jnp.asarray(code.rx_index), axis=1), axis=1)
    lo, hi = code.filler
    return out.at[:, lo:hi].set(FILLER_LLR)
