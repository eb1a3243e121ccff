"""DeepJSCC (Bourtsoulatze, Kurka, Gunduz 2019) as a multi-task reconstruction baseline (paper ref. [21]).

From the original paper: the encoder's five 5 x 5 conv layers with PReLU, the decoder's transposed convs
mirroring them with a sigmoid output, power normalisation before the channel, MSE training. The layers are
`casc_jax.casc.baselines.deepjscc`'s encoder and decoder, reused as they are (not copied).

Our choices: to meet the multi-task budget (`multitask_jax.baselines.common`) the strides are
(2, 2, 2, 2, 1) in the encoder and (1, 2, 2, 2, 2) in the decoder, so the channel input is
(H/16, W/16, C_out) with our system's C_out (the original downsamples by 4 and sets the bandwidth ratio
with the filters of the last layer); the widths come from `deepjscc.filters`. The loss is eq. (5), the
MSE on [-1, 1], as for our system. The model is SNR-blind (the SNR argument is ignored).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn

from casc_jax.casc.baselines.deepjscc import DeepJSCCDecoder, DeepJSCCEncoder
from multitask_jax.baselines.common import JSCCBaseline, link_fields
from multitask_jax.tasks import RECONSTRUCTION

ENCODER_STRIDES = (2, 2, 2, 2, 1)
DECODER_STRIDES = (1, 2, 2, 2, 2)


class Encoder(nn.Module):
    """I (B, H, W, 3) -> (B, H/16, W/16, channels), before power normalisation."""

    channels: int
    filters: Sequence[int] = (16, 32, 32, 32)
    kernel_size: int = 5

    @nn.compact
    def __call__(self, x, snr_db=None, *, train: bool = False):
        return DeepJSCCEncoder(self.channels, self.filters, self.kernel_size, ENCODER_STRIDES, name="net")(x)


class Decoder(nn.Module):
    """y (B, H/16, W/16, C) -> image (B, H, W, 3) in [-1, 1]."""

    filters: Sequence[int] = (16, 32, 32, 32)
    kernel_size: int = 5

    @nn.compact
    def __call__(self, y, snr_db=None, out_hw=None, *, train: bool = False):
        return DeepJSCCDecoder(self.filters, self.kernel_size, DECODER_STRIDES, name="net")(y)


def build(cfg, image_hw: Sequence[int], channels: int, channel_kind: str = "awgn", equalizer: str = "zf"):
    """DeepJSCC from `cfg` = {filters, kernel_size}."""
    filters, k = tuple(cfg.filters), int(cfg.kernel_size)
    return JSCCBaseline(
        "deepjscc",
        Encoder(channels, filters, k),
        Decoder(filters, k),
        RECONSTRUCTION,
        **link_fields(image_hw, channels, channel_kind, equalizer),
    )
