"""Denoising U-Net U(Z_t, C_hat, W, t) on the latent grid (CASC section III-C).

Concat-conditioned on the received condition C_hat reshaped to the latent grid (B, h, w, L);
sinusoidal timestep embedding; ResBlocks whose last conv is zero-initialised; self-attention at
the resolutions in `attn_resolutions` (given as downsampling factors, 1 = the latent grid).
Follows LDM's openaimodel where it differs from the autoencoder's blocks: GroupNorm eps 1e-5 and
stride-2 downsampling convs padded by one pixel on every side.
Every conv / dense layer may be made condition-aware by the CAN through the `dynamic` collection.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from casc_jax.nn.dynamic import CondConv, CondDense
from casc_jax.nn.layers import (
    UNET_NORM_EPS,
    AttnBlock,
    Downsample,
    ResBlock,
    Upsample,
    group_norm,
    timestep_embedding,
)


class UNet(nn.Module):
    """eps_theta(z_t, t | c_hat): (B, h, w, C) x (B,) x (B, h, w, L) -> (B, h, w, C)."""

    ch: int = 128
    ch_mult: Sequence[int] = (1, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (2, 4)
    head_dim: int = 32
    dropout: float = 0.0
    out_channels: int = 3
    dtype: jnp.dtype | None = None
    dynamic_impl: str = "patches"

    @nn.compact
    def __call__(self, z_t, t, c_hat, *, train: bool = False):
        block = dict(
            dropout=self.dropout,
            zero_init_last=True,
            dtype=self.dtype,
            dynamic_impl=self.dynamic_impl,
            norm_eps=UNET_NORM_EPS,
        )
        attn = dict(head_dim=self.head_dim, zero_init_proj=True, dtype=self.dtype, norm_eps=UNET_NORM_EPS)

        temb = timestep_embedding(t, self.ch)
        temb = CondDense(4 * self.ch, dtype=self.dtype, name="temb_dense0")(temb)
        temb = CondDense(4 * self.ch, dtype=self.dtype, name="temb_dense1")(nn.swish(temb))

        x = jnp.concatenate([z_t, c_hat.astype(z_t.dtype)], axis=-1)
        h = CondConv(self.ch, (3, 3), dtype=self.dtype, impl=self.dynamic_impl, name="conv_in")(x)
        skips = [h]
        ds = 1
        for i, mult in enumerate(self.ch_mult):
            for j in range(self.num_res_blocks):
                h = ResBlock(self.ch * mult, **block, name=f"down{i}_res{j}")(h, temb, train=train)
                if ds in self.attn_resolutions:
                    h = AttnBlock(**attn, name=f"down{i}_attn{j}")(h)
                skips.append(h)
            if i != len(self.ch_mult) - 1:
                h = Downsample(dtype=self.dtype, symmetric=True, name=f"down{i}_downsample")(h)
                skips.append(h)
                ds *= 2

        h = ResBlock(h.shape[-1], **block, name="mid_res1")(h, temb, train=train)
        h = AttnBlock(**attn, name="mid_attn")(h)
        h = ResBlock(h.shape[-1], **block, name="mid_res2")(h, temb, train=train)

        for i in reversed(range(len(self.ch_mult))):
            for j in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop().astype(h.dtype)], axis=-1)
                h = ResBlock(self.ch * self.ch_mult[i], **block, name=f"up{i}_res{j}")(h, temb, train=train)
                if ds in self.attn_resolutions:
                    h = AttnBlock(**attn, name=f"up{i}_attn{j}")(h)
            if i != 0:
                h = Upsample(dtype=self.dtype, name=f"up{i}_upsample")(h)
                ds //= 2

        h = nn.swish(group_norm(h.shape[-1], "norm_out", UNET_NORM_EPS)(h))
        out = CondConv(
            self.out_channels,
            (3, 3),
            kernel_init=nn.initializers.zeros,
            dtype=self.dtype,
            impl=self.dynamic_impl,
            name="conv_out",
        )(h)
        return out.astype(z_t.dtype)
