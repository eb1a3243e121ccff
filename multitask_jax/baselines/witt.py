"""WITT, the wireless image transmission transformer (Yang, Wang, Dai, Tan, Niu, Zhang 2023; paper ref. [20]),
a multi-task reconstruction baseline built on our Swin blocks (`multitask_jax.swin`).

From the original paper: a Swin-Transformer JSCC. Encoder: 2 x 2 patch embedding, four Swin stages with
patch merging between them (total downsampling 16), a linear head to C_out; decoder: a linear layer back
to the transformer width, four Swin stages each followed by patch reverse merging (x2 upsampling), a
linear layer to RGB. The SNR-adaptive channel modulation (ChannelModNet) sits before the encoder's head
and after the decoder's first linear layer: `modnet_layers` linear layers, each scaled by an SNR
modulator (FC-ReLU-FC-ReLU-FC-sigmoid of the SNR), and a final linear + sigmoid that rescales the
features channel-wise (the first layer sees the features with their gradient stopped, as the original).
WITT's DIV2K setting: widths (128, 192, 256, 320), depths (2, 2, 6, 2), heads (4, 6, 8, 10), window 8,
7 modulation layers of width 1.5 x the last width.

Our choices: the Swin blocks, patch embedding and merging are `multitask_jax.swin`'s (window padding
and masking as described there); patch reverse merging is LayerNorm, a linear layer to 4 x the output
width and a 2 x 2 depth-to-space; the output is 2 sigmoid - 1 (images in [-1, 1]); C_out and the
(H/16, W/16) grid are the multi-task budget's (`multitask_jax.baselines.common`); the loss is eq. (5).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax

from multitask_jax.baselines.common import JSCCBaseline, link_fields, output_image, snr_column
from multitask_jax.jscc import depth_to_space
from multitask_jax.swin import PatchEmbed, PatchMerging, SwinBlock
from multitask_jax.tasks import RECONSTRUCTION


class ChannelModNet(nn.Module):
    """SNR-adaptive channel modulation: x (B, h, w, C), SNR (B,) -> x * sigmoid(...) (B, h, w, C)."""

    layers: int = 7
    hidden: int = 96

    @nn.compact
    def __call__(self, x, snr_db):
        snr = snr_column(snr_db, x.shape[0])
        h = jax.lax.stop_gradient(x)
        for i in range(self.layers):
            m = snr
            for j, act in enumerate((nn.relu, nn.relu, nn.sigmoid)):
                m = act(nn.Dense(self.hidden, name=f"bm{i}_fc{j}")(m))
            h = nn.Dense(self.hidden, name=f"sm{i}")(h) * m[:, None, None, :]
        return x * nn.sigmoid(nn.Dense(x.shape[-1], name="out")(h))


class PatchReverseMerging(nn.Module):
    """(B, h, w, C) -> (B, 2h, 2w, features): LayerNorm, linear to 4 x features, 2 x 2 depth-to-space."""

    features: int

    @nn.compact
    def __call__(self, x):
        x = nn.LayerNorm(epsilon=1e-5, name="norm")(x)
        return depth_to_space(nn.Dense(4 * self.features, name="expand")(x), 2)


def _stage(x, depth: int, heads: int, window: int, mlp_ratio: float, name: str, train: bool):
    for i in range(depth):
        shift = window // 2 if i % 2 else 0
        x = SwinBlock(heads, window, shift, mlp_ratio, name=f"{name}_block{i}")(x, train=train)
    return x


@dataclasses.dataclass(frozen=True)
class SwinSpec:
    """The Swin stages WITT's encoder runs and its decoder mirrors (4 stages: patch 2 and 3 mergings = H/16)."""

    widths: tuple[int, ...] = (128, 192, 256, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    heads: tuple[int, ...] = (4, 6, 8, 10)
    window: int = 8
    mlp_ratio: float = 4.0
    modnet_layers: int = 7


class Encoder(nn.Module):
    """I (B, H, W, 3), SNR -> (B, H/16, W/16, channels), before power normalisation."""

    channels: int
    spec: SwinSpec = SwinSpec()

    @nn.compact
    def __call__(self, x, snr_db, *, train: bool = False):
        sp = self.spec
        h = PatchEmbed(2, sp.widths[0], name="patch_embed")(x)
        for s, (width, depth, heads) in enumerate(zip(sp.widths, sp.depths, sp.heads, strict=True)):
            if s:
                h = nn.Dense(width, name=f"stage{s}_proj")(PatchMerging(name=f"stage{s}_merge")(h))
            h = _stage(h, depth, heads, sp.window, sp.mlp_ratio, f"stage{s}", train)
        h = nn.LayerNorm(epsilon=1e-5, name="norm")(h)
        h = ChannelModNet(sp.modnet_layers, int(1.5 * sp.widths[-1]), name="modnet")(h, snr_db)
        return nn.Dense(self.channels, name="head")(h)


class Decoder(nn.Module):
    """y (B, H/16, W/16, C), SNR -> image (B, H, W, 3) in [-1, 1]."""

    spec: SwinSpec = SwinSpec()

    @nn.compact
    def __call__(self, y, snr_db, out_hw=None, *, train: bool = False):
        sp = self.spec
        widths = tuple(reversed(sp.widths))
        h = nn.Dense(widths[0], name="head")(y)
        h = ChannelModNet(sp.modnet_layers, int(1.5 * widths[0]), name="modnet")(h, snr_db)
        depths, heads = tuple(reversed(sp.depths)), tuple(reversed(sp.heads))
        for s in range(len(widths)):
            h = _stage(h, depths[s], heads[s], sp.window, sp.mlp_ratio, f"stage{s}", train)
            h = PatchReverseMerging(widths[min(s + 1, len(widths) - 1)], name=f"stage{s}_split")(h)
        h = nn.LayerNorm(epsilon=1e-5, name="norm")(h)
        return output_image(nn.Dense(3, name="to_rgb")(h))


def build(cfg, image_hw: Sequence[int], channels: int, channel_kind: str = "awgn", equalizer: str = "zf"):
    """WITT from `cfg` = {widths, depths, heads (4 stages each), window, mlp_ratio, modnet_layers}."""
    spec = SwinSpec(
        widths=tuple(cfg.widths),
        depths=tuple(cfg.depths),
        heads=tuple(cfg.heads),
        window=int(cfg.window),
        mlp_ratio=float(cfg.mlp_ratio),
        modnet_layers=int(cfg.modnet_layers),
    )
    if not len(spec.widths) == len(spec.depths) == len(spec.heads) == 4:
        raise ValueError("witt.widths, depths and heads need 4 stages each (patch 2 and 3 mergings: H/16)")
    return JSCCBaseline(
        "witt",
        Encoder(channels, spec),
        Decoder(spec),
        RECONSTRUCTION,
        **link_fields(image_hw, channels, channel_kind, equalizer),
    )


__all__ = ["ChannelModNet", "Decoder", "Encoder", "PatchReverseMerging", "SwinSpec", "build"]
