"""Transmitter source KB (paper section III-B): a 3-stage Swin-Transformer and the feature selection network.

Feature extraction (Liu et al. 2021, Swin-T layout; paper Table I: window 7, patch 4, embed 96, 3 heads in
stage 1):

    image I (B, H, W, 3) -> patch embed (4x4, 96) -> [stage 1 (96) -> merge] -> f1 (B, H/8,  W/8,  192)
                                                -> [stage 2 (192) -> merge] -> f2 (B, H/16, W/16, 384)
                                                -> [stage 3 (384) -> merge] -> f3 (B, H/32, W/32, 768)

i.e. every stage is followed by patch merging (the paper's "features after patch merging"), so f_i has
2 x embed_dim x 2^(i-1) channels. Sizes that are not multiples round up (Swin pads): the grids are
ceil(H/8), then ceil(./2) per merge. Exact resolutions (H x W):

    224 x 224: tokens 56x56 -> f1 28x28x192, f2 14x14x384, f3 7x7x768
    512 x 768: tokens 128x192 -> f1 64x96x192, f2 32x48x384, f3 16x24x768   (the paper's "768x512")

Windows: each block pads its (h, w) token grid to a multiple of the window (zeros, after the norm, as in
Swin's detection/segmentation code) and crops back. Unlike that code, padded tokens are also masked out of
the attention of real tokens, so padding never changes a real token's output. A stage whose grid is not
larger than the window uses one window of the grid's size and no shift (Swin's rule).

Feature selection: each f_i is projected by a 1x1 conv to `features` channels and bilinearly resized to the
f1 grid (H/8, W/8), the finest grid, where the JSCC encoder meets the image; then by task
    reconstruction  f_R = f1 + f2 + f3,      segmentation  f_S = f2 + f3.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from multitask_jax.tasks import RECONSTRUCTION, check_task

MASK_VALUE = -100.0  # Swin's additive attention mask for tokens of another region
_trunc_normal = nn.initializers.truncated_normal(0.02)


# ----------------------------------------------------------------------------------------------
# Pure window helpers.


def window_partition(x: jax.Array, window: int) -> jax.Array:
    """(B, H, W, C) with H, W multiples of `window` -> windows (B * H/w * W/w, w, w, C), row-major.

    Works on numpy and jax arrays alike.
    """
    b, h, w, c = x.shape
    if h % window or w % window:
        raise ValueError(f"grid {h}x{w} is not a multiple of the window {window}; pad it first")
    x = x.reshape(b, h // window, window, w // window, window, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c)


def window_reverse(windows: jax.Array, window: int, height: int, width: int) -> jax.Array:
    """Inverse of `window_partition`: (B * nW, w, w, C) -> (B, height, width, C)."""
    c = windows.shape[-1]
    x = windows.reshape(-1, height // window, width // window, window, window, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, height, width, c)


def relative_position_index(window: int) -> np.ndarray:
    """(w^2, w^2) int index into the ((2w-1)^2, heads) bias table for every (query, key) token pair."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)  # (2, w^2, w^2), each in [0, 2w-2]
    return (rel[0] * (2 * window - 1) + rel[1]).astype(np.int32)


def window_config(height: int, width: int, window: int, shift: int) -> tuple[int, int]:
    """Swin's rule: a grid not larger than the window gets one window of its size and no shift."""
    if min(height, width) <= window:
        return min(height, width), 0
    return window, shift


def attention_mask(height: int, width: int, window: int, shift: int) -> np.ndarray | None:
    """Additive mask (nW, w^2, w^2) for the padded, cyclically shifted (height, width) token grid.

    Tokens are labelled by the region they came from before the cyclic shift (Swin's 3 x 3 slices) and
    padded tokens get their own label; a pair of tokens with different labels gets MASK_VALUE, else 0.
    `height`, `width` are the unpadded sizes. Returns None when no token pair needs masking.
    """
    hp, wp = -(-height // window) * window, -(-width // window) * window
    if shift == 0 and (hp, wp) == (height, width):
        return None
    labels = np.zeros((hp, wp), np.int32)  # Swin's regions, in the coordinates of the shifted grid
    if shift:
        cuts = lambda n: (slice(0, n - window), slice(n - window, n - shift), slice(n - shift, n))
        for i, rows in enumerate(cuts(hp)):
            for j, cols in enumerate(cuts(wp)):
                labels[rows, cols] = 3 * i + j
    pad = np.ones((hp, wp), bool)
    pad[:height, :width] = False
    pad = np.roll(pad, (-shift, -shift), axis=(0, 1))  # original coordinates -> shifted grid
    labels = np.where(pad, labels + 9, labels)
    win = window_partition(labels[None, :, :, None], window).reshape(-1, window**2)  # numpy in, numpy out
    return np.where(win[:, :, None] != win[:, None, :], MASK_VALUE, 0.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Layers.


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability `rate` (train only)."""

    rate: float = 0.0

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        if not train or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
        return jnp.where(mask, x / keep, 0.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative position bias.

    x: (N, w^2, C) windows; mask: (nW, w^2, w^2) additive or None, with N = B * nW.
    """

    num_heads: int
    window: int

    @nn.compact
    def __call__(self, x, mask=None):
        n, t, c = x.shape
        heads = self.num_heads
        if c % heads:
            raise ValueError(f"channels {c} are not divisible by {heads} heads")
        table = self.param("relative_position_bias_table", _trunc_normal, ((2 * self.window - 1) ** 2, heads))
        bias = table[relative_position_index(self.window)].transpose(2, 0, 1)  # (heads, w^2, w^2)
        qkv = nn.Dense(3 * c, kernel_init=_trunc_normal, name="qkv")(x).reshape(n, t, 3, heads, c // heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        logits = jnp.einsum("nqhd,nkhd->nhqk", q, k) / math.sqrt(c // heads) + bias
        if mask is not None:
            nw = mask.shape[0]
            logits = (logits.reshape(n // nw, nw, heads, t, t) + mask[None, :, None]).reshape(n, heads, t, t)
        attn = jax.nn.softmax(logits, axis=-1)
        y = jnp.einsum("nhqk,nkhd->nqhd", attn, v).reshape(n, t, c)
        return nn.Dense(c, kernel_init=_trunc_normal, name="proj")(y)


class SwinBlock(nn.Module):
    """(Shifted-)window attention block: x + DP(W-MSA(LN(x))), then x + DP(MLP(LN(x))). x: (B, h, w, C)."""

    num_heads: int
    window: int = 7
    shift: int = 0
    mlp_ratio: float = 4.0
    drop_path: float = 0.0

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        b, h, w, c = x.shape
        window, shift = window_config(h, w, self.window, self.shift)
        y = nn.LayerNorm(epsilon=1e-5, name="norm1")(x)
        hp, wp = -(-h // window) * window, -(-w // window) * window
        y = jnp.pad(y, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
        if shift:
            y = jnp.roll(y, (-shift, -shift), axis=(1, 2))
        mask = attention_mask(h, w, window, shift)
        windows = window_partition(y, window).reshape(-1, window * window, c)
        windows = WindowAttention(self.num_heads, window, name="attn")(
            windows, None if mask is None else jnp.asarray(mask)
        )
        y = window_reverse(windows.reshape(-1, window, window, c), window, hp, wp)
        if shift:
            y = jnp.roll(y, (shift, shift), axis=(1, 2))
        x = x + DropPath(self.drop_path)(y[:, :h, :w], train=train)
        y = nn.LayerNorm(epsilon=1e-5, name="norm2")(x)
        y = nn.Dense(int(c * self.mlp_ratio), kernel_init=_trunc_normal, name="fc1")(y)
        y = nn.Dense(c, kernel_init=_trunc_normal, name="fc2")(nn.gelu(y, approximate=False))
        return x + DropPath(self.drop_path)(y, train=train)


class PatchEmbed(nn.Module):
    """(B, H, W, 3) -> (B, ceil(H/p), ceil(W/p), C): pad to a multiple of p, p x p/p conv, LayerNorm."""

    patch: int = 4
    features: int = 96

    @nn.compact
    def __call__(self, x):
        p = self.patch
        _, h, w, _ = x.shape
        x = jnp.pad(x, ((0, 0), (0, -h % p), (0, -w % p), (0, 0)))
        x = nn.Conv(self.features, (p, p), strides=p, padding="VALID", name="proj")(x)
        return nn.LayerNorm(epsilon=1e-5, name="norm")(x)


class PatchMerging(nn.Module):
    """(B, h, w, C) -> (B, ceil(h/2), ceil(w/2), 2C): concat each 2x2 neighbourhood, LayerNorm, linear."""

    @nn.compact
    def __call__(self, x):
        _, h, w, c = x.shape
        x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        x = nn.LayerNorm(epsilon=1e-5, name="norm")(x)
        return nn.Dense(2 * c, use_bias=False, kernel_init=_trunc_normal, name="reduction")(x)


class SwinFeatureExtractor(nn.Module):
    """Hierarchical Swin feature extraction: image (B, H, W, 3) -> (f1, f2, f3), see the module docstring.

    Block i of a stage shifts by window // 2 when i is odd. Drop-path rates rise linearly from 0 to
    `drop_path_rate` over all blocks (Swin's schedule).
    """

    patch_size: int = 4
    embed_dim: int = 96
    depths: Sequence[int] = (2, 2, 6)
    num_heads: Sequence[int] = (3, 6, 12)
    window: int = 7
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.0

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        if len(self.depths) != len(self.num_heads):
            raise ValueError(f"depths {self.depths} and num_heads {self.num_heads} need the same length")
        x = PatchEmbed(self.patch_size, self.embed_dim, name="patch_embed")(x)
        rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths)) if sum(self.depths) else []
        features, k = [], 0
        for s, (depth, heads) in enumerate(zip(self.depths, self.num_heads, strict=True)):
            for i in range(depth):
                x = SwinBlock(
                    heads,
                    self.window,
                    shift=self.window // 2 if i % 2 else 0,
                    mlp_ratio=self.mlp_ratio,
                    drop_path=float(rates[k]),
                    name=f"stage{s + 1}_block{i}",
                )(x, train=train)
                k += 1
            x = PatchMerging(name=f"stage{s + 1}_merge")(x)
            features.append(x)
        return tuple(features)


def feature_grids(height: int, width: int, patch_size: int = 4, stages: int = 3) -> list[tuple[int, int]]:
    """The (h, w) grids of f1..f_stages for an H x W image: ceil(H/p), then ceil(./2) per patch merging."""
    h, w = -(-height // patch_size), -(-width // patch_size)
    grids = []
    for _ in range(stages):
        h, w = -(-h // 2), -(-w // 2)
        grids.append((h, w))
    return grids


class FeatureSelection(nn.Module):
    """Task feature selection: (f1, f2, f3) -> f_R = f1 + f2 + f3 or f_S = f2 + f3, (B, h1, w1, features).

    Each f_i goes through its own 1x1 conv to `features` channels, then f2, f3 are bilinearly resized to
    f1's grid (h1, w1). The projections of all three always exist in the parameters; segmentation never
    reads f1 (its gradient w.r.t. f1 is exactly zero).
    """

    features: int = 96

    @nn.compact
    def __call__(self, feats: Sequence[jax.Array], task: str):
        check_task(task)
        if len(feats) != 3:
            raise ValueError(f"feature selection needs (f1, f2, f3), got {len(feats)} features")
        b, h, w, _ = feats[0].shape
        projected = []
        for i, f in enumerate(feats):
            p = nn.Conv(self.features, (1, 1), name=f"proj{i + 1}")(f)
            if p.shape[1:3] != (h, w):
                p = jax.image.resize(p, (b, h, w, self.features), "bilinear")
            projected.append(p)
        p1, p2, p3 = projected
        return p1 + p2 + p3 if task == RECONSTRUCTION else p2 + p3
