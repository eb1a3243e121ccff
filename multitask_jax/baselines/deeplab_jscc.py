"""Deeplab-JSCC (paper ref. [24]): a DeepLab (atrous convolution + ASPP) encoder-decoder for segmentation
over the channel, a multi-task segmentation baseline (21 VOC classes).

From DeepLabv3 (Chen et al. 2017), which the paper names as the architecture: a convolutional backbone
with output stride 16, atrous spatial pyramid pooling (a 1 x 1 conv, 3 x 3 atrous convs at rates
(6, 12, 18) and image-level pooling, concatenated and projected by a 1 x 1 conv), a 1 x 1 classifier and
bilinear upsampling to the input size; dropout 0.1 before the classifier. The paper's text says only that
the Deeplab network is the architecture of the JSCC encoder and decoder.

Our choices: the network is split at the channel. Transmitter: backbone (four stride-2 stages, each a
3 x 3 conv, GroupNorm, ReLU and a residual block, instead of ResNet-101) -> ASPP -> 1 x 1 conv to C_out
on the multi-task budget's (H/16, W/16) grid (`multitask_jax.baselines.common`). Receiver: 3 x 3 conv to
the width -> ASPP -> 3 x 3 conv, GroupNorm, ReLU, dropout -> 1 x 1 classifier -> bilinear x16. GroupNorm
replaces BatchNorm (pure functions, no batch statistics); atrous rates and widths are config values
(`deeplab.rates`, smaller on small images). Loss: eq. (6), VOC label 255 ignored.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from casc_jax.nn.layers import ResBlock, group_norm
from multitask_jax.baselines.common import JSCCBaseline, link_fields
from multitask_jax.tasks import SEGMENTATION


def _conv_gn_relu(x, features: int, kernel: int, name: str, dilation: int = 1, stride: int = 1):
    x = nn.Conv(features, (kernel, kernel), strides=stride, kernel_dilation=dilation, name=f"{name}_conv")(x)
    return nn.relu(group_norm(features, f"{name}_norm")(x))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: (B, h, w, C) -> (B, h, w, features)."""

    features: int = 256
    rates: Sequence[int] = (6, 12, 18)

    @nn.compact
    def __call__(self, x):
        branches = [_conv_gn_relu(x, self.features, 1, "b0")]
        branches += [_conv_gn_relu(x, self.features, 3, f"b{i + 1}", rate) for i, rate in enumerate(self.rates)]
        pooled = _conv_gn_relu(jnp.mean(x, axis=(1, 2), keepdims=True), self.features, 1, "pool")
        branches.append(jnp.broadcast_to(pooled, x.shape[:3] + (self.features,)))
        return _conv_gn_relu(jnp.concatenate(branches, axis=-1), self.features, 1, "project")


class Encoder(nn.Module):
    """I (B, H, W, 3) -> (B, H/16, W/16, channels), before power normalisation (SNR-blind)."""

    channels: int
    widths: Sequence[int] = (64, 128, 256, 512)
    aspp_features: int = 256
    rates: Sequence[int] = (6, 12, 18)

    @nn.compact
    def __call__(self, x, snr_db=None, *, train: bool = False):
        h = x
        for i, width in enumerate(self.widths):
            h = _conv_gn_relu(h, width, 3, f"down{i}", stride=2)
            h = ResBlock(width, name=f"res{i}")(h)
        h = ASPP(self.aspp_features, self.rates, name="aspp")(h)
        return nn.Conv(self.channels, (1, 1), name="out")(h)


class Decoder(nn.Module):
    """y (B, H/16, W/16, C) -> logits (B, H, W, num_classes) (SNR-blind)."""

    num_classes: int = 21
    features: int = 256
    rates: Sequence[int] = (6, 12, 18)
    dropout: float = 0.1

    @nn.compact
    def __call__(self, y, snr_db=None, out_hw=None, *, train: bool = False):
        h = _conv_gn_relu(y, self.features, 3, "stem")
        h = ASPP(self.features, self.rates, name="aspp")(h)
        h = _conv_gn_relu(h, self.features, 3, "head")
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        logits = nn.Conv(self.num_classes, (1, 1), name="classifier")(h)
        return jax.image.resize(logits, (logits.shape[0], *out_hw, self.num_classes), "bilinear")


def build(cfg, image_hw: Sequence[int], channels: int, channel_kind: str = "awgn", equalizer: str = "zf"):
    """Deeplab-JSCC from `cfg` = {widths (4 stages), features, rates, dropout, num_classes}."""
    widths = tuple(cfg.widths)
    if len(widths) != 4:
        raise ValueError(f"deeplab.widths needs 4 stride-2 stages (output stride 16), got {widths}")
    rates = tuple(int(r) for r in cfg.rates)
    return JSCCBaseline(
        "deeplab_jscc",
        Encoder(channels, widths, int(cfg.features), rates),
        Decoder(int(cfg.num_classes), int(cfg.features), rates, float(cfg.dropout)),
        SEGMENTATION,
        num_classes=int(cfg.num_classes),
        **link_fields(image_hw, channels, channel_kind, equalizer),
    )
