"""Condition-aware layers: a static layer plus an optional per-sample (dynamic) layer.

A condition-aware layer reads its per-sample kernel W from the variable collection `dynamic`
at its own path (see casc_jax.casc.can). Without that collection it is an ordinary conv / dense
layer, so one network definition serves both the static and the condition-aware model.

Dynamic kernel layout, fixed once when the CAN generates it (never rebuilt inside the sampler):
  conv  (B, kh*kw*Cin, Cout), rows ordered (tap_row, tap_col, c_in) as a flattened HWIO kernel
  dense (B, Cin, Cout)
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

DYNAMIC = "dynamic"
DYNAMIC_CONV_IMPLS = ("patches", "taps", "grouped")
STATIC_CONV_IMPLS = ("auto", "xla", "taps")
# 'auto' computes a static conv as tap matmuls when its output has at most this many pixels, per backend.
# CPU (measured): XLA's convolution is ~100x slower than plain matmuls on 2x2 maps (3x3 256->256 at 2x2,
# batch 256: 708 ms as a conv, 8 ms as 9 tap matmuls). GPU/TPU: not measured, so XLA's conv everywhere.
TAPS_MAX_OUTPUT_PIXELS = {"cpu": 4}


def taps_max_output_pixels(backend: str | None = None) -> int:
    """The largest conv output (H * W pixels) that 'auto' computes as taps on `backend` (default: JAX's)."""
    return TAPS_MAX_OUTPUT_PIXELS.get(backend or jax.default_backend(), 0)


def static_conv_form(out_pixels: int, impl: str = "auto", backend: str | None = None) -> str:
    """'taps' or 'xla': the form `conv2d` uses for an output of `out_pixels` pixels."""
    if impl not in STATIC_CONV_IMPLS:
        raise ValueError(f"unknown conv impl {impl!r}; choose one of {STATIC_CONV_IMPLS}")
    if impl == "taps" or (impl == "auto" and out_pixels <= taps_max_output_pixels(backend)):
        return "taps"
    return "xla"


def shifted_views(x: jax.Array, kernel_size: Sequence[int]) -> list[jax.Array]:
    """The kh*kw zero-padded shifts of x (B, H, W, C) that a SAME, stride-1 conv visits."""
    kh, kw = kernel_size
    _, h, w, _ = x.shape
    xp = jnp.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
    return [xp[:, i : i + h, j : j + w] for i in range(kh) for j in range(kw)]


def conv_taps(x: jax.Array, kernel: jax.Array, strides: int = 1, padding: str = "SAME") -> jax.Array:
    """A 2-D convolution as a sum over kernel taps of (strided) shifted views times (Cin, Cout) matmuls.

    x: (B, H, W, Cin); kernel: (kh, kw, Cin, Cout) HWIO; same result as lax.conv_general_dilated.
    """
    kh, kw, _, cout = kernel.shape
    _, h, w, _ = x.shape
    if padding == "SAME":
        ho, wo = -(-h // strides), -(-w // strides)
        ph, pw = max((ho - 1) * strides + kh - h, 0), max((wo - 1) * strides + kw - w, 0)
        x = jnp.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    elif padding == "VALID":
        ho, wo = (h - kh) // strides + 1, (w - kw) // strides + 1
    else:
        raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
    out = None
    for i in range(kh):
        for j in range(kw):
            view = x[:, i : i + (ho - 1) * strides + 1 : strides, j : j + (wo - 1) * strides + 1 : strides]
            term = view @ kernel[i, j]
            out = term if out is None else out + term
    return out


def conv2d(x: jax.Array, kernel: jax.Array, strides: int = 1, padding: str = "SAME", impl: str = "auto"):
    """Static NHWC/HWIO convolution by XLA's conv or by `conv_taps` ('auto' picks by output size and backend)."""
    out_pixels = -(-x.shape[1] // strides) * -(-x.shape[2] // strides)
    if static_conv_form(out_pixels, impl) == "taps":
        return conv_taps(x, kernel, strides, padding)
    return jax.lax.conv_general_dilated(
        x, kernel, (strides, strides), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def dynamic_conv(x: jax.Array, w: jax.Array, kernel_size: Sequence[int], impl: str = "patches") -> jax.Array:
    """Per-sample SAME stride-1 convolution: y_b = conv(x_b, W_b).

    x: (B, H, W, Cin); w: (B, kh*kw*Cin, Cout) -> (B, H, W, Cout). All three forms are one
    batched operation: 'patches' (shifted-slice im2col + one batched matmul), 'taps' (a sum of
    kh*kw batched matmuls) and 'grouped' (vmap of lax.conv, lowered by XLA to a grouped conv).
    """
    b, h, wd, cin = x.shape
    kh, kw = kernel_size
    cout = w.shape[-1]
    if w.shape != (b, kh * kw * cin, cout):
        raise ValueError(f"dynamic kernel shape {w.shape} does not match {(b, kh * kw * cin, cout)}")
    w = w.astype(x.dtype)
    if kh == kw == 1:
        return jnp.einsum("bhwc,bco->bhwo", x, w)
    if impl == "patches":
        patches = jnp.concatenate(shifted_views(x, kernel_size), axis=-1)
        return jnp.einsum("bhwk,bko->bhwo", patches, w)
    if impl == "taps":
        taps = w.reshape(b, kh * kw, cin, cout)
        views = shifted_views(x, kernel_size)
        return sum(jnp.einsum("bhwc,bco->bhwo", v, taps[:, i]) for i, v in enumerate(views))
    if impl == "grouped":
        kernels = w.reshape(b, kh, kw, cin, cout)

        def one(xi, ki):
            return jax.lax.conv_general_dilated(
                xi[None], ki, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )[0]

        return jax.vmap(one)(x, kernels)
    raise ValueError(f"unknown dynamic conv impl {impl!r}; choose one of {DYNAMIC_CONV_IMPLS}")


class CondConv(nn.Module):
    """nn.Conv (NHWC, HWIO kernel) plus a dynamic per-sample conv when `dynamic/kernel` is given."""

    features: int
    kernel_size: Sequence[int] = (3, 3)
    strides: int = 1
    padding: str = "SAME"
    kernel_init: nn.initializers.Initializer = nn.linear.default_kernel_init
    dtype: jnp.dtype | None = None
    impl: str = "patches"
    static_impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        kh, kw = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        dtype = self.dtype or x.dtype
        x = x.astype(dtype)
        y = conv2d(x, kernel.astype(dtype), self.strides, self.padding, self.static_impl) + bias.astype(dtype)
        if self.has_variable(DYNAMIC, "kernel"):
            if self.strides != 1 or self.padding != "SAME":
                raise ValueError(f"{self.name}: dynamic kernels need a stride-1 SAME conv")
            y = y + dynamic_conv(x, self.get_variable(DYNAMIC, "kernel"), self.kernel_size, self.impl)
        return y


class CondDense(nn.Module):
    """nn.Dense on the last axis plus a per-sample matmul when `dynamic/kernel` (B, Cin, Cout) is given."""

    features: int
    kernel_init: nn.initializers.Initializer = nn.linear.default_kernel_init
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        dtype = self.dtype or x.dtype
        x = x.astype(dtype)
        y = x @ kernel.astype(dtype) + bias.astype(dtype)
        if self.has_variable(DYNAMIC, "kernel"):
            w = self.get_variable(DYNAMIC, "kernel").astype(dtype)
            flat = x.reshape(x.shape[0], -1, x.shape[-1])
            y = y + jnp.einsum("bnc,bco->bno", flat, w).reshape(y.shape)
        return y
