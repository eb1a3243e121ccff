"""DeepJSCC (Bourtsoulatze, Kurka, Gunduz 2019): the CNN joint source-channel code CASC compares against.

Architecture (the paper's Fig. 2, kernel 5 x 5 everywhere, PReLU after every layer but the last one of
the decoder):
  encoder  X (B, H, W, 3) -> conv 16/2 -> conv 32/2 -> conv 32/1 -> conv 32/1 -> conv c/1 -> Z (B, H/4, W/4, c)
           -> per-sample power normalisation (unit power per complex symbol) = the channel input
  channel  the shared complex AWGN / Rayleigh channel (`casc_jax.channel`), SNR per sample
  decoder  Y (B, H/4, W/4, c) -> tconv 32/1 -> tconv 32/1 -> tconv 32/1 -> tconv 16/2 -> tconv 3/2, sigmoid
The paper's 5 x 5 convs pad 2 on each side (as in the reference implementations), and the transposed
convs double H and W exactly (flax 'SAME' padding).

Compression ratio. CR = d / (2n) exactly as for CASC: d = (H/4) (W/4) c reals = d/2 complex channel
uses per image of n = 3 H W source reals (the paper's bandwidth ratio k/n with k = d/2). The number of
output filters c comes from `casc_jax.channel.condition_channels(cr, (H, W, 3), (H/4, W/4))`: on
CIFAR-10 (32 x 32) CR 1/48 gives d = 128, c = 2; CR 1/96 gives d = 64, c = 1.

Pixel range. The library's images are in [-1, 1]. The paper feeds pixels / 255 in [0, 1] and its
sigmoid output lives in [0, 1]; here the encoder's first operation is (X + 1) / 2 and the decoder
returns 2 sigmoid(.) - 1, so both ends of the model speak [-1, 1] and the network sees the paper's ranges.
The MSE loss is the paper's: the mean squared error in [0, 1] units, mean(((X_hat - X) / 2)^2).
The LPIPS losses (for "DeepJSCC (LPIPS)" of the CASC paper) take lpips_fn(X_hat, X) on [-1, 1] images:
'lpips' alone, or 'mse_lpips' = MSE + lambda LPIPS, the form perceptual codecs are usually trained with.

Deviations from the paper, all minor: PReLU has one learnable slope per layer initialised at 0.25
(PyTorch's default, as in the reference re-implementations; Keras' default would be one slope per
unit); the transposed convs use flax's kernel layout (a learned kernel, so a flip does not matter);
the paper's "normalisation" and "denormalisation" layers are the [-1, 1] <-> [0, 1] maps above.

Config (ml_collections, read by `build_deepjscc`):
  cr                      '1/48' | '1/96' | any ratio realisable on the (H/4, W/4) grid
  data.image_size         H = W, a multiple of 4 (32 for CIFAR-10)
  deepjscc.filters        the four hidden widths of the encoder, (16, 32, 32, 32); the decoder mirrors them
  deepjscc.kernel_size    5
  channel.kind            'awgn' | 'rayleigh';  channel.equalizer  'zf' | 'mmse' | 'none'
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from casc_jax import channel as ch

Params = Mapping[str, Any]
LOSSES = ("mse", "lpips", "mse_lpips")
LPIPS_LOSSES = ("lpips", "mse_lpips")
ENCODER_STRIDES = (2, 2, 1, 1, 1)
DECODER_STRIDES = (1, 1, 1, 2, 2)
PRELU_INIT = 0.25


def _check_filters(filters: Sequence[int]) -> None:
    if len(filters) != 4:
        raise ValueError(
            f"deepjscc.filters needs the 4 hidden widths of the paper's encoder, e.g. (16, 32, 32, 32); "
            f"got {tuple(filters)}"
        )


class DeepJSCCEncoder(nn.Module):
    """X (B, H, W, 3) in [-1, 1] -> Z (B, H/4, W/4, c), before power normalisation."""

    channels: int
    filters: Sequence[int] = (16, 32, 32, 32)
    kernel_size: int = 5
    strides: Sequence[int] = ENCODER_STRIDES  # the paper's; multitask_jax's baseline downsamples by 16

    @nn.compact
    def __call__(self, x):
        _check_filters(self.filters)
        k, p = self.kernel_size, self.kernel_size // 2
        h = (x + 1.0) / 2.0  # the paper's input normalisation to [0, 1]
        for i, (features, stride) in enumerate(zip((*self.filters, self.channels), self.strides, strict=True)):
            h = nn.Conv(features, (k, k), strides=stride, padding=((p, p), (p, p)), name=f"conv{i}")(h)
            h = nn.PReLU(negative_slope_init=PRELU_INIT, name=f"prelu{i}")(h)
        return h


class DeepJSCCDecoder(nn.Module):
    """Y (B, H/4, W/4, c) -> X_hat (B, H, W, 3) in [-1, 1] (2 sigmoid - 1)."""

    filters: Sequence[int] = (16, 32, 32, 32)
    kernel_size: int = 5
    strides: Sequence[int] = DECODER_STRIDES

    @nn.compact
    def __call__(self, y):
        _check_filters(self.filters)
        k = self.kernel_size
        widths = (*reversed(self.filters), 3)
        h = y
        for i, (features, stride) in enumerate(zip(widths, self.strides, strict=True)):
            h = nn.ConvTranspose(features, (k, k), strides=(stride, stride), padding="SAME", name=f"tconv{i}")(h)
            if i < len(widths) - 1:
                h = nn.PReLU(negative_slope_init=PRELU_INIT, name=f"prelu{i}")(h)
        return 2.0 * nn.sigmoid(h) - 1.0


@dataclasses.dataclass(frozen=True)
class DeepJSCC:
    """DeepJSCC built from a config; see `build_deepjscc`. Parameters: {'encoder', 'decoder'}."""

    encoder: DeepJSCCEncoder
    decoder: DeepJSCCDecoder
    image_shape: tuple[int, int, int]
    channel_kind: str = "awgn"
    equalizer: str = "zf"

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(H/4, W/4, c): the shape of one channel input."""
        h, w, _ = self.image_shape
        return (h // 4, w // 4, self.encoder.channels)

    @property
    def num_channel_uses(self) -> int:
        """Complex symbols per image: d / 2."""
        return math.prod(self.latent_shape) // 2

    def init(self, key: jax.Array) -> dict:
        k_enc, k_dec = jax.random.split(key)
        return {
            "encoder": self.encoder.init(k_enc, jnp.zeros((1,) + self.image_shape))["params"],
            "decoder": self.decoder.init(k_dec, jnp.zeros((1,) + self.latent_shape))["params"],
        }

    def transmit(self, params: Params, x: jax.Array) -> jax.Array:
        """X (B, H, W, 3) in [-1, 1] -> channel input (B, H/4, W/4, c), unit power per complex symbol."""
        self._check_images(x)
        return ch.normalize_power(self.encoder.apply({"params": params["encoder"]}, x))

    def channel(self, key: jax.Array, z: jax.Array, snr_db: jax.Array | float) -> jax.Array:
        """Channel input -> received Y through the configured channel at `snr_db` (scalar or (B,))."""
        return ch.transmit(key, z, snr_db, self.channel_kind, self.equalizer, normalize=False)

    def receive(self, params: Params, y: jax.Array) -> jax.Array:
        """Y (B, H/4, W/4, c) -> X_hat (B, H, W, 3) in [-1, 1]."""
        if y.ndim != 4 or tuple(y.shape[1:]) != self.latent_shape:
            raise ValueError(
                f"expected received symbols of shape (B, {', '.join(map(str, self.latent_shape))}), "
                f"got {tuple(y.shape)}"
            )
        return self.decoder.apply({"params": params["decoder"]}, y)

    def __call__(self, params: Params, x: jax.Array, key: jax.Array, snr_db: jax.Array | float) -> jax.Array:
        """End to end: X -> Z -> Y -> X_hat."""
        return self.receive(params, self.channel(key, self.transmit(params, x), snr_db))

    def loss(
        self,
        params: Params,
        x: jax.Array,
        key: jax.Array,
        snr_db: jax.Array | float,
        kind: str = "mse",
        lpips_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
        lpips_weight: float = 1.0,
    ) -> jax.Array:
        """Scalar training loss of one batch through the channel.

        kind 'mse': mean(((X_hat - X) / 2)^2), the paper's MSE on [0, 1] pixels.
        kind 'lpips': mean(lpips_fn(X_hat, X)), lpips_fn(x, y) -> (B,) on [-1, 1] images (the trainer
        passes `casc_jax.metrics.lpips.load_lpips(...)` or any differentiable stand-in).
        kind 'mse_lpips': the MSE + lpips_weight * the LPIPS.
        """
        if kind not in LOSSES:
            raise ValueError(f"unknown DeepJSCC loss {kind!r}; choose one of {LOSSES}")
        if kind in LPIPS_LOSSES and lpips_fn is None:
            raise ValueError(f"kind={kind!r} needs lpips_fn(x, y) -> (B,), e.g. casc_jax.metrics.lpips.load_lpips()")
        x_hat = self(params, x, key, snr_db)
        mse = jnp.mean(jnp.square((x_hat - x) / 2.0))
        if kind == "mse":
            return mse
        lpips = jnp.mean(lpips_fn(x_hat, x))
        return lpips if kind == "lpips" else mse + lpips_weight * lpips

    def _check_images(self, x: jax.Array) -> None:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(
                f"expected images of shape (B, {', '.join(map(str, self.image_shape))}), got {tuple(x.shape)}"
            )


def build_deepjscc(config: ml_collections.ConfigDict) -> DeepJSCC:
    """DeepJSCC from a config with `cr`, data.image_size, deepjscc.{filters, kernel_size} and channel."""
    size = config.data.image_size
    if size % 4:
        raise ValueError(f"DeepJSCC downsamples by 4: data.image_size must be a multiple of 4, got {size}")
    image_shape = (size, size, 3)
    channels = ch.condition_channels(config.cr, image_shape, (size // 4, size // 4))
    cfg = config.deepjscc
    filters = tuple(cfg.filters)
    _check_filters(filters)
    kernel_size = cfg.get("kernel_size", 5)
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"deepjscc.kernel_size must be a positive odd number, got {kernel_size}")
    if config.channel.kind not in ch.CHANNELS:
        raise ValueError(f"unknown channel.kind {config.channel.kind!r}; choose one of {ch.CHANNELS}")
    return DeepJSCC(
        encoder=DeepJSCCEncoder(channels=channels, filters=filters, kernel_size=kernel_size),
        decoder=DeepJSCCDecoder(filters=filters, kernel_size=kernel_size),
        image_shape=image_shape,
        channel_kind=config.channel.kind,
        equalizer=config.channel.get("equalizer", "zf"),
    )
