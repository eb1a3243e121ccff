"""JSCC encoder, receiver source KB and segmentation decoder (paper sections III-C and IV), NHWC.

Layer counts follow the paper's Table I; "Conv2D layers" counts the 3x3 convolutions (ResNet's 1x1
projection shortcut and the segmentation classifier's 1x1 conv, both named in the text, are not among them).
Data flow (H x W image, Swin feature grid H/8, `downsample` s = 2 by default):

    JSCC encoder (Table I: 3 conv layers, kernel 3, hidden 128):
      I (B, H, W, 3), f (B, H/8, W/8, C') -> space-to-depth(I, 8) (B, H/8, W/8, 192) ++ f
      -> residual block: conv3x3 (128), conv3x3 (128), 1x1 projection shortcut     (Table I conv 1, 2)
      -> GN + swish -> conv3x3 stride s (C_out)                                     (Table I conv 3)
      -> per-sample power normalisation -> x (B, H/8s, W/8s, C_out), k = (H/8s)(W/8s) C_out / 2 symbols
    channel y = h x + n (casc_jax.channel)
    receiver KB (Table I: 3 conv layers, kernel 3):
      y -> conv3x3 (128) = r0                                                       (Table I conv 1)
      -> r1 = r0 + conv3x3(swish(GN(r0)))                                           (residual block 1, conv 2)
      -> r2 = r1 + conv3x3(swish(GN(r1)))                                           (residual block 2, conv 3)
      feature selection: reconstruction g_R = r1 + r2 (all received features), segmentation g_S = r1
      (only the first block's feature, paper section III-C)
    segmentation decoder (Table I: 1 conv layer, kernel 3, dropout 0.1, 21 classes):
      [y, g_S] -> conv3x3 (128) + GN + ReLU                                        (Table I conv 1)
      -> dropout 0.1 -> 1x1 conv (21 logits, the text's final 1x1 convolution) -> bilinear upsampling to
      (H, W). The 1x1 conv and bilinear resizing are both linear and bilinear weights sum to 1, so applying
      the 1x1 conv first is the same function at 1/(8s)^2 the cost.

Where the text and Table I differ, Table I is followed: the text gives the receiver KB two residual
blocks of two CNN layers each (4 convs) and the segmentation decoder two residual blocks; Table I gives 3
and 1 conv layers. Here the receiver KB keeps its two residual blocks with one conv each after a stem
conv, and the segmentation decoder is the head Table I describes (one 3x3 conv, dropout 0.1, 21 classes),
reading the receiver KB's residual block for its residual features.

The channel-use and bit arithmetic (signal grid, k, overhead bits, C_out for a budget) lives in
`multitask_jax.channel_budget`, which configs read without loading jax.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from casc_jax import channel as ch
from casc_jax.metrics.segmentation import VOC_IGNORE_INDEX
from casc_jax.nn.layers import ResBlock, group_norm
from multitask_jax.channel_budget import FEATURE_STRIDE
from multitask_jax.tasks import RECONSTRUCTION, check_task


def space_to_depth(x: jax.Array, block: int) -> jax.Array:
    """(B, H, W, C) -> (B, H/r, W/r, r*r*C), each r x r block flattened (row, col, channel); lossless."""
    b, h, w, c = x.shape
    if h % block or w % block:
        raise ValueError(f"image {h}x{w} is not a multiple of {block}; pad or crop it first")
    x = x.reshape(b, h // block, block, w // block, block, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // block, w // block, block * block * c)


def depth_to_space(x: jax.Array, block: int) -> jax.Array:
    """Inverse of `space_to_depth`: (B, h, w, r*r*C) -> (B, h*r, w*r, C)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, block, block, c // block**2).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * block, w * block, c // block**2)


class ResidualConv(nn.Module):
    """A residual block with one conv: x + conv3x3(swish(GN(x))). (B, h, w, C) -> (B, h, w, C)."""

    @nn.compact
    def __call__(self, x):
        h = nn.swish(group_norm(x.shape[-1], "norm")(x))
        return x + nn.Conv(x.shape[-1], (3, 3), name="conv")(h)


class JSCCEncoder(nn.Module):
    """Shared JSCC encoder (section IV-A, Table I: 3 conv layers, kernel 3, hidden 128):
    (I (B, H, W, 3), f (B, H/8, W/8, C')) -> x (B, h, w, C_out).

    Residual block (`res`: conv1, conv2 and a 1x1 shortcut), then the strided conv3x3 `out`. H and W must
    be multiples of 8 (the Swin f1 grid). x has unit average power per complex symbol.
    """

    channels: int = 8
    hidden: int = 128
    downsample: int = 2

    @nn.compact
    def __call__(self, image, feature):
        grid = space_to_depth(image, FEATURE_STRIDE)
        if grid.shape[:3] != feature.shape[:3]:
            raise ValueError(f"feature {feature.shape} is not on the image's /8 grid {grid.shape[:3]}")
        x = jnp.concatenate([grid, feature.astype(grid.dtype)], axis=-1)
        x = ResBlock(self.hidden, name="res")(x)
        x = nn.swish(group_norm(self.hidden, name="norm")(x))
        x = nn.Conv(self.channels, (3, 3), strides=self.downsample, name="out")(x)
        return ch.normalize_power(x)


class ReceiverKB(nn.Module):
    """Receiver source KB (section III-C, Table I: 3 conv layers, kernel 3): y (B, h, w, C_out) -> g (B, h, w, hidden).

    Feature generation: conv3x3 `stem`, then two one-conv residual blocks, r1 and r2. Selection:
    reconstruction g_R = r1 + r2, segmentation g_S = r1 (the second block is not evaluated for segmentation).
    """

    hidden: int = 128

    @nn.compact
    def __call__(self, y, task: str):
        check_task(task)
        r0 = nn.Conv(self.hidden, (3, 3), name="stem")(y)
        r1 = ResidualConv(name="res1")(r0)
        if task != RECONSTRUCTION:
            return r1
        r2 = ResidualConv(name="res2")(r1)
        return r1 + r2


class SegmentationDecoder(nn.Module):
    """JSCC decoder for segmentation (section IV-B, Table I: 1 conv layer, kernel 3, dropout 0.1, 21 classes):
    (y, g_S) (B, h, w, .) -> logits (B, H, W, classes).

    conv3x3 + GN + ReLU, dropout, 1x1 classifier, bilinear upsampling to `out_hw`.
    """

    hidden: int = 128
    num_classes: int = 21
    dropout: float = 0.1

    @nn.compact
    def __call__(self, y, feature, out_hw: Sequence[int], *, train: bool = False):
        x = jnp.concatenate([y, feature.astype(y.dtype)], axis=-1)
        x = nn.Conv(self.hidden, (3, 3), name="conv")(x)
        x = nn.relu(group_norm(self.hidden, name="norm")(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        logits = nn.Conv(self.num_classes, (1, 1), name="classifier")(x)
        b = logits.shape[0]
        return jax.image.resize(logits, (b, *out_hw, self.num_classes), "bilinear")


def segmentation_loss(
    logits: jax.Array, labels: jax.Array, ignore_index: int = VOC_IGNORE_INDEX
) -> jax.Array:
    """Per-pixel cross-entropy L_S (eq. 6) averaged over the pixels whose label is not `ignore_index`.

    logits: (B, H, W, K); labels: int (B, H, W) in [0, K) or `ignore_index` (VOC's 255 boundary).
    Returns a scalar; 0 when every pixel is ignored.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {logits.shape} and labels {labels.shape} do not match")
    valid = labels != ignore_index
    safe = jnp.where(valid, labels, 0).astype(jnp.int32)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(jnp.sum(valid), 1)

