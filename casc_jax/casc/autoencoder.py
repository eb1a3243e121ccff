"""Semantic autoencoder: LDM's VQ-regularised first stage (VQ-f4), Fig. 2 of the CASC paper.

Following LDM, `encode` returns the pre-quantisation latent Z and `decode` quantises first, so the
diffusion model works on continuous latents and its output Z_tilde is snapped to the codebook.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from casc_jax.nn.layers import AttnBlock, Downsample, ResBlock, Upsample, group_norm


def _unit(v: jax.Array, tiny: float = 1e-30) -> jax.Array:
    """v / ||v|| along the last axis (codes start at ~1/K, so no eps may swamp their norm)."""
    return v * jax.lax.rsqrt(jnp.maximum(jnp.sum(v**2, axis=-1, keepdims=True), tiny))


class VectorQuantizer(nn.Module):
    """Nearest-codebook quantiser with a straight-through estimator (VQ-VAE, Taming Transformers).

    Returns (z_q, codebook_loss, indices). codebook_loss = ||sg[z] - e||^2 + beta ||z - sg[e]||^2.
    With `l2_normalize` z and the codes are compared, and z_q returned, as unit vectors (ViT-VQGAN, Yu et
    al. 2022): LDM's codebook starts within 1/K of zero and moves at most ~lr per Adam step, so in a short
    run it never reaches the encoder's scale and collapses (CPU preset, 250 steps: 9 of 1024 codes used,
    encoder output rms 5.0, reconstruction 14.9 dB); normalised codes are spread over the sphere from the start.
    """

    num_codes: int = 8192
    beta: float = 0.25
    l2_normalize: bool = False

    @nn.compact
    def __call__(self, z):
        dim = z.shape[-1]
        bound = 1.0 / self.num_codes
        codebook = self.param(
            "codebook", lambda k, s: jax.random.uniform(k, s, minval=-bound, maxval=bound), (self.num_codes, dim)
        )
        if self.l2_normalize:
            z, codebook = _unit(z), _unit(codebook)
        flat = z.reshape(-1, dim).astype(jnp.float32)
        dist = (
            jnp.sum(flat**2, axis=1, keepdims=True) - 2 * flat @ codebook.T + jnp.sum(codebook**2, axis=1)[None]
        )
        indices = jnp.argmin(dist, axis=1)
        z_q = codebook[indices].reshape(z.shape)
        loss = jnp.mean((jax.lax.stop_gradient(z) - z_q) ** 2) + self.beta * jnp.mean(
            (z - jax.lax.stop_gradient(z_q)) ** 2
        )
        z_q = z + jax.lax.stop_gradient(z_q - z)
        return z_q, loss, indices.reshape(z.shape[:-1])


class Encoder(nn.Module):
    """X (B, H, W, 3) -> h (B, H/2^M, W/2^M, z_channels), M = len(ch_mult) - 1."""

    ch: int = 128
    ch_mult: Sequence[int] = (1, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = ()
    z_channels: int = 3
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        h = nn.Conv(self.ch, (3, 3), name="conv_in")(x)
        res = x.shape[1]
        for i, mult in enumerate(self.ch_mult):
            for j in range(self.num_res_blocks):
                h = ResBlock(self.ch * mult, self.dropout, name=f"down{i}_res{j}")(h, train=train)
                if res in self.attn_resolutions:
                    h = AttnBlock(head_dim=h.shape[-1], name=f"down{i}_attn{j}")(h)
            if i != len(self.ch_mult) - 1:
                h = Downsample(name=f"down{i}_downsample")(h)
                res //= 2
        h = ResBlock(h.shape[-1], self.dropout, name="mid_res1")(h, train=train)
        h = AttnBlock(head_dim=h.shape[-1], name="mid_attn")(h)
        h = ResBlock(h.shape[-1], self.dropout, name="mid_res2")(h, train=train)
        h = nn.swish(group_norm(h.shape[-1], "norm_out")(h))
        return nn.Conv(self.z_channels, (3, 3), name="conv_out")(h)


class Decoder(nn.Module):
    """z (B, h, w, z_channels) -> X_hat (B, h*2^M, w*2^M, out_channels).

    With `features=True` it stops before its last layer `conv_out` (the decoder head, `decoder_head`).
    """

    ch: int = 128
    ch_mult: Sequence[int] = (1, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = ()
    out_channels: int = 3
    dropout: float = 0.0

    @nn.compact
    def __call__(self, z, *, train: bool = False, features: bool = False):
        h = nn.Conv(self.ch * self.ch_mult[-1], (3, 3), name="conv_in")(z)
        h = ResBlock(h.shape[-1], self.dropout, name="mid_res1")(h, train=train)
        h = AttnBlock(head_dim=h.shape[-1], name="mid_attn")(h)
        h = ResBlock(h.shape[-1], self.dropout, name="mid_res2")(h, train=train)
        res = z.shape[1]
        for i in reversed(range(len(self.ch_mult))):
            for j in range(self.num_res_blocks + 1):
                h = ResBlock(self.ch * self.ch_mult[i], self.dropout, name=f"up{i}_res{j}")(h, train=train)
                if res in self.attn_resolutions:
                    h = AttnBlock(head_dim=h.shape[-1], name=f"up{i}_attn{j}")(h)
            if i != 0:
                h = Upsample(name=f"up{i}_upsample")(h)
                res *= 2
        h = nn.swish(group_norm(h.shape[-1], "norm_out")(h))
        if features:
            return h
        return nn.Conv(self.out_channels, (3, 3), name="conv_out")(h)


def decoder_head(head_params, h: jax.Array) -> jax.Array:
    """The decoder's last layer L (`params["decoder"]["conv_out"]`): features (B, H, W, ch) -> X_hat (B, H, W, 3)."""
    out_channels = head_params["kernel"].shape[-1]
    return nn.Conv(out_channels, (3, 3)).apply({"params": head_params}, h)


class VQAutoencoder(nn.Module):
    """Semantic encoder E and decoder D with a VQ bottleneck (LDM VQModel).

    Methods: encode(X) -> Z (pre-quantisation), decode(Z) -> X_hat (quantises first),
    __call__(X) -> (X_hat, codebook_loss, indices) for stage-1 training, and features(X) -> (h, codebook_loss,
    indices), the same up to the decoder's last layer: X_hat = decoder_head(params["decoder"]["conv_out"], h).
    """

    ch: int = 128
    ch_mult: Sequence[int] = (1, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = ()
    z_channels: int = 3
    embed_dim: int = 3
    num_codes: int = 8192
    beta: float = 0.25
    dropout: float = 0.0
    l2_codes: bool = False

    def setup(self):
        arch = dict(
            ch=self.ch,
            ch_mult=self.ch_mult,
            num_res_blocks=self.num_res_blocks,
            attn_resolutions=self.attn_resolutions,
            dropout=self.dropout,
        )
        self.encoder = Encoder(z_channels=self.z_channels, **arch)
        self.decoder = Decoder(**arch)
        self.quant_conv = nn.Conv(self.embed_dim, (1, 1))
        self.post_quant_conv = nn.Conv(self.z_channels, (1, 1))
        self.quantizer = VectorQuantizer(self.num_codes, self.beta, self.l2_codes)

    def encode(self, x, *, train: bool = False):
        """X (B, H, W, 3) in [-1, 1] -> Z (B, H/4, W/4, embed_dim), eq. (1)."""
        return self.quant_conv(self.encoder(x, train=train))

    def quantize(self, z):
        return self.quantizer(z)

    def decode(self, z, *, train: bool = False):
        """Z or Z_tilde -> X_hat, eq. (6). Quantises Z before the decoder."""
        z_q, _, _ = self.quantizer(z)
        return self.decoder(self.post_quant_conv(z_q), train=train)

    def __call__(self, x, *, train: bool = False):
        z = self.encode(x, train=train)
        z_q, codebook_loss, indices = self.quantizer(z)
        return self.decoder(self.post_quant_conv(z_q), train=train), codebook_loss, indices

    def features(self, x, *, train: bool = False):
        """`__call__` without the decoder's last layer: (h (B, H, W, ch), codebook_loss, indices)."""
        z = self.encode(x, train=train)
        z_q, codebook_loss, indices = self.quantizer(z)
        return self.decoder(self.post_quant_conv(z_q), train=train, features=True), codebook_loss, indices

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)
