"""DiT reconstruction decoder (paper section IV-B): a diffusion transformer with adaLN-Zero conditioning.

    x_t (B, H, W, 3) --space-to-depth r--> (B, H/r, W/r, 3r^2) ++ [y, g_R] resized to (H/r, W/r)
      -> patchify (p x p / p conv, D) + 2D sin-cos positional encoding -> N tokens (H/rp)(W/rp) x D
      -> depth x DiT block(tokens, c), adaLN-Zero;  c = MLP(timestep_embedding(t)) + Linear(pool([y, g_R]))
      -> final adaLN layer + linear to p*p*3r^2 -> unpatchify (B, H/r, W/r, 3r^2)
      -> upsampling to (H, W, 3) by depth-to-space (a sub-pixel convolution: the final linear is its conv)
      -> final residual block u + conv3x3(silu(conv3x3(u))) at full resolution -> x0_hat (B, H, W, 3)

Conditioning choice: the received signal y and the receiver feature g_R enter twice. Pooled, they shift and
scale every block (adaLN, the global condition); as a spatial map concatenated to x_t before patchify, they
give each token its own local condition, which a pooled vector cannot carry and which reconstruction of
a specific image needs.

Prediction target: x0 (the clean image). The paper trains with the image MSE L_R (eq. 5); with an
x0-prediction network, the training loss ||x0 - x0_hat(x_t, t)||^2 is exactly eq. 5 for every t. The
scanned samplers of casc_jax.diffusion take a noise prediction, so `eps_from_x0` converts
eps = (x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t) (defined for every t since beta_0 > 0).

adaLN-Zero (Peebles and Xie 2023): the modulation layers and the final linear start at zero, so every block
starts as the identity and the decoder's output starts at 0.

Conformance with the reference DiT (facebookresearch/DiT, models.py): the 2D sin-cos positional encoding
(channel halves in DiT's order, see `sincos_pos_embed_2d`), the timestep embedding (GLIDE's [cos | sin],
max period 10^4; `casc_jax.nn.layers.timestep_embedding`), LayerNorm without affine, eps 1e-6 and the
two-pass variance, the attention / MLP block (one qkv linear, tanh GELU) and DiT's `initialize_weights`:
  every linear layer            xavier-uniform weight, zero bias
  patch embedding (conv)        xavier-uniform over its flattened (p*p*C_in, D) view, zero bias
  timestep-embedder MLP         N(0, 0.02^2) weights, zero biases
  adaLN modulation linears      zero weight and bias (every block and the final layer)
  final output linear           zero weight and bias
Where this decoder differs from DiT (our conditioning and output, not DiT's class-conditional latent model):
  - the condition is the received signal y and receiver feature g_R, not a class label: DiT's LabelEmbedder
    (an embedding table, N(0, 0.02^2), with label dropout for classifier-free guidance) becomes a linear
    layer `cond_embed` on the pooled [y, g_R], initialised like every DiT linear (xavier, zero bias); there
    is no condition dropout and no guidance. c = t_emb + cond_emb as in DiT.
  - [y, g_R] also enters as a spatial map concatenated to the patchified input (see above).
  - the input is the pixel image folded by space-to-depth (no VAE latent), the output one x0 prediction
    (no learned variance, DiT's learn_sigma), and the grid may be non-square (DiT's is square).
  - the full-resolution refine block (`refine1`, `refine2`) is ours: refine1 keeps Flax's default
    initialisation, refine2 starts at zero so the output still starts at 0.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from casc_jax.diffusion import Schedule, eps_from_prediction
from casc_jax.nn.layers import timestep_embedding
from multitask_jax.jscc import depth_to_space, space_to_depth

zeros = nn.initializers.zeros
_xavier = nn.initializers.xavier_uniform()  # DiT: every nn.Linear weight (bias 0, Flax's default)
# DiT initialises the patch-embedding conv "like nn.Linear": xavier over the (D, C_in*p*p) view, so fan_in
# = p*p*C_in and fan_out = D (Flax's xavier_uniform on a conv kernel would count fan_out = p*p*D).
_xavier_flat_conv = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=(0, 1, 2), out_axis=-1)
_t_embed_init = nn.initializers.normal(0.02)  # DiT: timestep-embedder MLP weights


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    """DiT hyper-parameters; the presets are data in configs/multitask_models_base.py (`dit_preset`)."""

    hidden_size: int
    depth: int
    num_heads: int
    patch_size: int
    mlp_ratio: float
    pixel_factor: int
    refine_hidden: int
    freq_dim: int


def sincos_pos_embed_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    """1D sin-cos encoding (MAE / DiT), float64 (pos.size, dim): [sin(pos w_k) | cos(pos w_k)],
    w_k = 10000^(-k / (dim/2)), k = 0 .. dim/2 - 1."""
    if dim % 2:
        raise ValueError(f"1D sin-cos encoding needs an even dim, got {dim}")
    omega = 1.0 / 10000.0 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2))
    args = np.asarray(pos, np.float64).reshape(-1, 1) * omega[None]
    return np.concatenate([np.sin(args), np.cos(args)], axis=1)


def sincos_pos_embed_2d(dim: int, height: int, width: int) -> np.ndarray:
    """Fixed 2D sin-cos positional encoding of DiT, float32 (height * width, dim), tokens row-major.

    DiT (get_2d_sincos_pos_embed) builds its grid with the width coordinate first, so the first dim/2
    channels encode the token's COLUMN and the last dim/2 its ROW (DiT names the first half emb_h; it holds
    the column index). Each half is `sincos_pos_embed_1d`. DiT's grid is square; this is its layout on a
    height x width grid (token i * width + j has column j, row i).
    """
    if dim % 4:
        raise ValueError(f"2D sin-cos encoding needs dim divisible by 4, got {dim}")
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")  # (height, width) each
    emb = np.concatenate([sincos_pos_embed_1d(dim // 2, cols), sincos_pos_embed_1d(dim // 2, rows)], axis=1)
    return emb.astype(np.float32)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """adaLN: x (B, N, D) * (1 + scale (B, D)) + shift (B, D)."""
    return x * (1 + scale[:, None]) + shift[:, None]


def _norm(name: str) -> nn.LayerNorm:
    """DiT's LayerNorm(elementwise_affine=False, eps=1e-6): two-pass variance E[(x - mean)^2] (Flax's fast
    E[x^2] - mean^2 loses the variance in float32 when |mean| >> std)."""
    return nn.LayerNorm(epsilon=1e-6, use_scale=False, use_bias=False, use_fast_variance=False, name=name)


class DiTBlock(nn.Module):
    """x (B, N, D), c (B, D) -> x + g1 * Attn(adaLN(x)) then + g2 * MLP(adaLN(x)); the identity at init."""

    num_heads: int
    mlp_ratio: float = 4.0

    @nn.compact
    def __call__(self, x, c):
        b, n, d = x.shape
        mod = nn.Dense(6 * d, kernel_init=zeros, name="adaLN_modulation")(nn.silu(c))
        shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod, 6, axis=-1)
        h = modulate(_norm("norm1")(x), shift1, scale1)
        qkv = nn.Dense(3 * d, kernel_init=_xavier, name="qkv")(h).reshape(b, n, 3, self.num_heads, -1)
        h = nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]).reshape(b, n, d)
        x = x + gate1[:, None] * nn.Dense(d, kernel_init=_xavier, name="proj")(h)
        h = modulate(_norm("norm2")(x), shift2, scale2)
        h = nn.gelu(nn.Dense(int(d * self.mlp_ratio), kernel_init=_xavier, name="fc1")(h), approximate=True)
        return x + gate2[:, None] * nn.Dense(d, kernel_init=_xavier, name="fc2")(h)


class FinalLayer(nn.Module):
    """adaLN (shift, scale) then a zero-initialised linear to `features` per token."""

    features: int

    @nn.compact
    def __call__(self, x, c):
        mod = nn.Dense(2 * x.shape[-1], kernel_init=zeros, name="adaLN_modulation")(nn.silu(c))
        shift, scale = jnp.split(mod, 2, axis=-1)
        h = modulate(_norm("norm")(x), shift, scale)
        return nn.Dense(self.features, kernel_init=zeros, name="linear")(h)


class DiT(nn.Module):
    """x0-prediction DiT decoder: (x_t (B, H, W, 3), t int (B,), y (B, h, w, Cy), g (B, h, w, Cg)) -> x0_hat.

    H and W must be multiples of pixel_factor * patch_size. See the module docstring.
    """

    config: DiTConfig

    @nn.compact
    def __call__(self, x_t, t, y, g):
        cfg = self.config
        b, hh, ww, c_img = x_t.shape
        r, p, d = cfg.pixel_factor, cfg.patch_size, cfg.hidden_size
        if hh % (r * p) or ww % (r * p):
            raise ValueError(f"image {hh}x{ww} must be a multiple of pixel_factor * patch_size = {r * p}")
        cond = jnp.concatenate([y, g.astype(y.dtype)], axis=-1)
        gh, gw = hh // r, ww // r
        cond_map = jax.image.resize(cond, (b, gh, gw, cond.shape[-1]), "bilinear")
        x = jnp.concatenate([space_to_depth(x_t, r), cond_map.astype(x_t.dtype)], axis=-1)
        x = nn.Conv(d, (p, p), strides=p, padding="VALID", kernel_init=_xavier_flat_conv, name="patch_embed")(x)
        th, tw = gh // p, gw // p
        x = x.reshape(b, th * tw, d) + jnp.asarray(sincos_pos_embed_2d(d, th, tw))[None]
        temb = timestep_embedding(t, cfg.freq_dim)
        temb = nn.silu(nn.Dense(d, kernel_init=_t_embed_init, name="t_embed1")(temb))
        temb = nn.Dense(d, kernel_init=_t_embed_init, name="t_embed2")(temb)
        c = temb + nn.Dense(d, kernel_init=_xavier, name="cond_embed")(jnp.mean(cond, axis=(1, 2)))
        for i in range(cfg.depth):
            x = DiTBlock(cfg.num_heads, cfg.mlp_ratio, name=f"block{i}")(x, c)
        out_ch = c_img * r * r
        x = FinalLayer(p * p * out_ch, name="final")(x, c)
        x = depth_to_space(x.reshape(b, th, tw, p * p * out_ch), p)  # unpatchify: (B, H/r, W/r, 3r^2)
        u = depth_to_space(x, r)  # upsampling to full resolution (B, H, W, 3)
        h = nn.silu(nn.Conv(cfg.refine_hidden, (3, 3), name="refine1")(u))
        return u + nn.Conv(c_img, (3, 3), kernel_init=zeros, name="refine2")(h)


def eps_from_x0(schedule: Schedule, x_t: jax.Array, t: jax.Array, x0: jax.Array) -> jax.Array:
    """eps = (x_t - alpha_t x0) / sigma_t: an x0 prediction as the samplers' noise input.

    t: (B,) int, or real on the samplers' continuous-time grid (``diffusion.alpha_sigma``).
    """
    return eps_from_prediction(schedule, x_t, t, x0, "x0")
