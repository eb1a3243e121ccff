"""The multi-task system's channel budget: channel-input grid, channel uses k and overhead bits. Pure Python,
so configs can size C_out without loading jax.

Bit accounting (the paper's 20 Kbit comparison, section V-C): a channel input of k complex symbols is
2k real numbers; `overhead_bits` counts each real as `bits_per_real` = 32 bits (float32), i.e. 64 bits per
channel use. At 224 x 224 with s = 2 the grid is 14 x 14, so C_out = 3 gives k = 294 channel uses =
18,816 bits <= 20 Kbit (20,000 bits); `max_channels_for_budget` finds that C_out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

FEATURE_STRIDE = 8  # the f1 grid of the Swin source KB: patch 4, then one patch merging
BITS_PER_REAL = 32


def signal_grid(image_hw: Sequence[int], downsample: int = 2) -> tuple[int, int]:
    """(h, w) of the channel input for an (H, W) image: ceil(ceil(H / 8) / s) (SAME strided conv)."""
    h, w = (-(-int(n) // FEATURE_STRIDE) for n in image_hw)
    return -(-h // downsample), -(-w // downsample)


def channel_uses(image_hw: Sequence[int], channels: int, downsample: int = 2) -> int:
    """k, complex channel uses per image: h * w * C_out / 2 (C_out * h * w must be even)."""
    reals = math.prod(signal_grid(image_hw, downsample)) * int(channels)
    if reals % 2:
        raise ValueError(f"the channel input has {reals} reals per image; complex symbols need an even count")
    return reals // 2


def overhead_bits(num_channel_uses: int, bits_per_real: int = BITS_PER_REAL) -> int:
    """Communication overhead in bits: 2 reals per channel use, `bits_per_real` bits each."""
    return 2 * int(num_channel_uses) * int(bits_per_real)


def max_channels_for_budget(
    image_hw: Sequence[int], budget_bits: float, downsample: int = 2, bits_per_real: int = BITS_PER_REAL
) -> int:
    """The largest C_out whose overhead fits `budget_bits` (e.g. 20_000 for the paper's 20 Kbit)."""
    per_channel = math.prod(signal_grid(image_hw, downsample)) * bits_per_real
    c = int(budget_bits // per_channel)
    if c < 1:
        raise ValueError(f"{budget_bits} bits is less than one channel ({per_channel} bits) for {image_hw}")
    return c
