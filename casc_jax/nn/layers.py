"""Reusable convolutional building blocks (LDM / DDPM style), NHWC.

Every conv and dense layer is condition-aware capable (casc_jax.nn.dynamic): it is static unless a
per-sample kernel is supplied for its path in the `dynamic` collection.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from casc_jax.nn.dynamic import CondConv, CondDense

zeros = nn.initializers.zeros


AE_NORM_EPS = 1e-6  # LDM's autoencoder (taming `Normalize`)
UNET_NORM_EPS = 1e-5  # LDM's denoiser (openaimodel `GroupNorm32`, torch's default)


def module_from_config(cls: type[nn.Module], section, **fixed) -> nn.Module:
    """`cls(...)` with every field that the config `section` sets (sequences as tuples, None as ()) and `fixed`."""
    names = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
    unknown = set(section.keys()) - names
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {sorted(unknown)}; its fields: {sorted(names)}")
    kwargs = {k: tuple(v) if isinstance(v, list | tuple) else v for k, v in section.items()}
    kwargs.update({k: () for k, v in kwargs.items() if v is None and isinstance(getattr(cls, k, None), tuple)})
    return cls(**kwargs, **fixed)


def group_norm(channels: int, name: str | None = None, eps: float = AE_NORM_EPS) -> nn.GroupNorm:
    """GroupNorm(32) as in LDM; fewer groups for narrow (test-sized) layers."""
    return nn.GroupNorm(num_groups=math.gcd(32, channels), epsilon=eps, name=name)


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding of timesteps t (B,) -> (B, dim) as in DDPM: [cos | sin]."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    return jnp.pad(emb, ((0, 0), (0, dim % 2)))


class ResBlock(nn.Module):
    """GroupNorm-swish-conv3x3 twice with a residual path (1x1 shortcut when channels change).

    With `temb` (B, E) the timestep embedding is projected and added between the convs.
    `zero_init_last` zero-initialises the second conv so the block starts as the identity (U-Net).
    """

    features: int
    dropout: float = 0.0
    zero_init_last: bool = False
    dtype: jnp.dtype | None = None
    dynamic_impl: str = "patches"
    norm_eps: float = AE_NORM_EPS

    @nn.compact
    def __call__(self, x, temb=None, *, train: bool = False):
        h = nn.swish(group_norm(x.shape[-1], "norm1", self.norm_eps)(x))
        h = CondConv(self.features, (3, 3), dtype=self.dtype, impl=self.dynamic_impl, name="conv1")(h)
        if temb is not None:
            h = h + CondDense(self.features, dtype=self.dtype, name="temb_proj")(nn.swish(temb))[:, None, None]
        h = nn.swish(group_norm(self.features, "norm2", self.norm_eps)(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        init = zeros if self.zero_init_last else nn.linear.default_kernel_init
        h = CondConv(
            self.features, (3, 3), kernel_init=init, dtype=self.dtype, impl=self.dynamic_impl, name="conv2"
        )(h)
        if x.shape[-1] != self.features:
            x = CondConv(self.features, (1, 1), dtype=self.dtype, name="shortcut")(x)
        return x + h


class AttnBlock(nn.Module):
    """Spatial multi-head self-attention with a residual path: x + proj(attn(norm(x))).

    `head_dim` sets the number of heads (channels // head_dim).
    """

    head_dim: int = 64
    zero_init_proj: bool = False
    dtype: jnp.dtype | None = None
    norm_eps: float = AE_NORM_EPS

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        heads = max(1, c // self.head_dim)
        y = group_norm(c, "norm", self.norm_eps)(x).reshape(b, h * w, c)
        qkv = CondDense(3 * c, dtype=self.dtype, name="qkv")(y)
        q, k, v = (a.reshape(b, h * w, heads, c // heads) for a in jnp.split(qkv, 3, axis=-1))
        y = nn.dot_product_attention(q, k, v).reshape(b, h * w, c)
        init = zeros if self.zero_init_proj else nn.linear.default_kernel_init
        y = CondDense(c, kernel_init=init, dtype=self.dtype, name="proj_out")(y)
        return x + y.reshape(b, h, w, c).astype(x.dtype)


class Downsample(nn.Module):
    """Strided 3x3 conv halving H and W.

    `symmetric` pads one pixel on every side (LDM's denoiser, openaimodel `Downsample`); otherwise
    (0, 1) on each spatial axis (LDM's autoencoder). The two sample different grids.
    """

    dtype: jnp.dtype | None = None
    symmetric: bool = False

    @nn.compact
    def __call__(self, x):
        pad = (1, 1) if self.symmetric else (0, 1)
        x = jnp.pad(x, ((0, 0), pad, pad, (0, 0)))
        return CondConv(x.shape[-1], (3, 3), strides=2, padding="VALID", dtype=self.dtype, name="conv")(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 followed by a 3x3 conv."""

    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return CondConv(x.shape[-1], (3, 3), dtype=self.dtype, name="conv")(x)
