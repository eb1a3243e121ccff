"""ADJSCC (Xu, Ai, Chen, Yang, Sun, Rodrigues 2021): DeepJSCC with SNR-adaptive attention feature modules
(paper ref. [22]), a multi-task reconstruction baseline.

From the original paper: five 5 x 5 conv layers in the encoder and five transposed convs in the decoder,
each followed by GDN (IGDN in the decoder) and PReLU (none after the encoder's last layer; a sigmoid
after the decoder's last), and an attention feature (AF) module after every layer but the last of each
side: the channel-wise mean of the feature map is concatenated with the SNR, passed through
FC-ReLU-FC-sigmoid, and scales the channels, so one model adapts to every SNR. 256 filters per layer.

Our choices: the GDN is simplified (`GDN`'s docstring); the AF hidden width is max(C/16, 4); the strides are
(2, 2, 2, 2, 1) and (1, 2, 2, 2, 2) so that the channel input is the multi-task budget's (H/16, W/16,
C_out) (`multitask_jax.baselines.common`); the widths come from `adjscc.filters`; the loss is eq. (5).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from multitask_jax.baselines.common import JSCCBaseline, link_fields, output_image, snr_column
from multitask_jax.baselines.deepjscc import DECODER_STRIDES, ENCODER_STRIDES
from multitask_jax.tasks import RECONSTRUCTION

PRELU_INIT = 0.25


class GDN(nn.Module):
    """Simplified generalised divisive normalisation (Balle et al. 2016), (B, H, W, C) -> same.

    y_i = x_i / sqrt(beta_i^2 + sum_j (gamma_ij)^2 x_j^2 + eps) (inverse: times instead of divided), with
    beta initialised to 1 and gamma^2 to 0.1 I. Simplified: positivity comes from squaring the parameters
    instead of the original's lower-bounded reparameterisation.
    """

    inverse: bool = False
    eps: float = 1e-6

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        beta = self.param("beta", nn.initializers.ones, (c,))
        gamma = self.param("gamma", lambda key, shape: jnp.sqrt(0.1) * jnp.eye(shape[0]), (c, c))
        norm = jnp.sqrt(jnp.square(beta) + jnp.square(x) @ jnp.square(gamma) + self.eps)
        return x * norm if self.inverse else x / norm


class AttentionFeature(nn.Module):
    """AF module: x (B, H, W, C), SNR (B,) -> x * sigmoid(FC(ReLU(FC([mean_HW(x), SNR]))))."""

    @nn.compact
    def __call__(self, x, snr_db):
        c = x.shape[-1]
        context = jnp.concatenate([jnp.mean(x, axis=(1, 2)), snr_column(snr_db, x.shape[0])], axis=-1)
        h = nn.relu(nn.Dense(max(c // 16, 4), name="fc1")(context))
        return x * nn.sigmoid(nn.Dense(c, name="fc2")(h))[:, None, None, :]


class Encoder(nn.Module):
    """I (B, H, W, 3), SNR -> (B, H/16, W/16, channels), before power normalisation."""

    channels: int
    filters: Sequence[int] = (256, 256, 256, 256)
    kernel_size: int = 5

    @nn.compact
    def __call__(self, x, snr_db, *, train: bool = False):
        k = self.kernel_size
        h = (x + 1.0) / 2.0  # [0, 1] pixels, as the original
        widths = (*self.filters, self.channels)
        for i, (features, stride) in enumerate(zip(widths, ENCODER_STRIDES)):
            h = nn.Conv(features, (k, k), strides=stride, name=f"conv{i}")(h)
            h = GDN(name=f"gdn{i}")(h)
            if i < len(widths) - 1:
                h = nn.PReLU(negative_slope_init=PRELU_INIT, name=f"prelu{i}")(h)
                h = AttentionFeature(name=f"af{i}")(h, snr_db)
        return h


class Decoder(nn.Module):
    """y (B, H/16, W/16, C), SNR -> image (B, H, W, 3) in [-1, 1]."""

    filters: Sequence[int] = (256, 256, 256, 256)
    kernel_size: int = 5

    @nn.compact
    def __call__(self, y, snr_db, out_hw=None, *, train: bool = False):
        k = self.kernel_size
        widths = (*reversed(self.filters), 3)
        h = y
        for i, (features, stride) in enumerate(zip(widths, DECODER_STRIDES)):
            h = nn.ConvTranspose(features, (k, k), strides=(stride, stride), padding="SAME", name=f"tconv{i}")(h)
            h = GDN(inverse=True, name=f"igdn{i}")(h)
            if i < len(widths) - 1:
                h = nn.PReLU(negative_slope_init=PRELU_INIT, name=f"prelu{i}")(h)
                h = AttentionFeature(name=f"af{i}")(h, snr_db)
        return output_image(h)


def build(cfg, image_hw: Sequence[int], channels: int, channel_kind: str = "awgn", equalizer: str = "zf"):
    """ADJSCC from `cfg` = {filters (4 widths), kernel_size}."""
    filters, k = tuple(cfg.filters), int(cfg.kernel_size)
    if len(filters) != 4:
        raise ValueError(f"adjscc.filters needs 4 hidden widths, got {filters}")
    return JSCCBaseline(
        "adjscc",
        Encoder(channels, filters, k),
        Decoder(filters, k),
        RECONSTRUCTION,
        **link_fields(image_hw, channels, channel_kind, equalizer),
    )
