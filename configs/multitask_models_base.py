"""The multi-task system's model sections as data: Table I's 'paper' model and the CPU-sized 'small' and
'tiny'. `multitask_jax.system.build_multitask` builds a system from them; nothing here loads jax.

The DiT sizes: 'paper' is DiT-XL/2 (depth 28, hidden 1152, 16 heads, patch 2; about 675M in DiT); 'small'
and 'tiny' are CPU-sized. `pixel_factor` is the DiT input's pixel-shuffle factor and `refine_hidden` the
width of the refine block after it (multitask_jax.dit).
"""

from __future__ import annotations

import ml_collections

CAMVID_NUM_CLASSES = 11  # len(multitask_jax.data.CAMVID_CLASSES), pinned by a test; void is ignored
VOC_NUM_CLASSES = 21  # PASCAL VOC 2012: 20 classes and background

_DIT_PAPER = dict(hidden_size=1152, depth=28, num_heads=16, patch_size=2, mlp_ratio=4.0, pixel_factor=8,
                  refine_hidden=64, freq_dim=256)
DIT_PRESETS = {
    "paper": _DIT_PAPER,
    "small": dict(_DIT_PAPER, hidden_size=256, depth=6, num_heads=4, refine_hidden=32, freq_dim=128),
    "tiny": dict(_DIT_PAPER, hidden_size=32, depth=2, num_heads=2, pixel_factor=4, refine_hidden=8, freq_dim=32),
}
MODEL_PRESETS = tuple(DIT_PRESETS)


def _check_preset(preset: str) -> None:
    if preset not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {MODEL_PRESETS}")


def dit_preset(preset: str = "paper", **overrides) -> dict:
    """The DiT fields of `preset` ('paper', 'small', 'tiny'), with optional field overrides."""
    _check_preset(preset)
    unknown = set(overrides) - set(_DIT_PAPER)
    if unknown:
        raise ValueError(f"unknown DiT field(s) {sorted(unknown)}; the fields are {sorted(_DIT_PAPER)}")
    return dict(DIT_PRESETS[preset], **overrides)


def model_config(preset: str = "paper") -> ml_collections.ConfigDict:
    """The model sections of a multi-task config: image_size, swin, selection, jscc, receiver, seg, dit,
    diffusion, channel. 'paper' follows Table I; 'small' and 'tiny' are CPU-sized."""
    _check_preset(preset)
    paper = preset == "paper"
    tiny = preset == "tiny"
    c = ml_collections.ConfigDict()
    c.image_size = (224, 224) if paper else (64, 64) if not tiny else (32, 32)
    c.swin = dict(
        patch_size=4,
        embed_dim=96 if paper else 48 if not tiny else 12,
        depths=(2, 2, 6) if paper else (2, 2, 2) if not tiny else (2, 1, 1),
        num_heads=(3, 6, 12) if paper else (3, 6, 12) if not tiny else (1, 2, 2),
        window=7 if not tiny else 2,
        mlp_ratio=4.0,
        drop_path_rate=0.0,
    )
    c.selection = dict(features=96 if paper else 48 if not tiny else 8)
    c.jscc = dict(hidden=128 if not tiny else 16, channels=8 if not tiny else 4, downsample=2)
    c.receiver = dict(hidden=128 if not tiny else 16)
    c.seg = dict(hidden=128 if not tiny else 16, num_classes=VOC_NUM_CLASSES, dropout=0.1)
    c.dit = dit_preset(preset)
    steps = 1000 if not tiny else 8
    # DDPM's 1e-4..0.02 is set for T = 1000; shorter chains scale the betas by 1000 / T so that x_T
    # is still (nearly) pure noise, as the samplers assume.
    scale = 1000 / steps
    c.diffusion = dict(
        schedule="linear", num_timesteps=steps, beta_start=min(1e-4 * scale, 0.5), beta_end=min(0.02 * scale, 0.999)
    )
    c.channel = dict(kind="awgn", equalizer="zf")
    c.clip_x0 = 1.0
    return c

