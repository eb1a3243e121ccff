"""The multi-task experiment config shared by configs/multitask_recon.py and configs/multitask_seg.py.

One workdir holds one multi-task model (both configs are named 'multitask', so the default workdir is
runs/multitask, or runs/multitask_smoke for the smoke presets):

    WORKDIR/reconstruction/checkpoints   stage trained by multitask_recon.py (L_R, eq. 5)
    WORKDIR/segmentation/checkpoints     stage trained by multitask_seg.py (L_S, eq. 6)
    WORKDIR/eval/<task>/                 metrics.json, metrics.csv, plots and grids of that task

Sharing (the paper's unified JSCC encoder, section III-C): the reconstruction stage trains the shared
parts (Swin source KB, feature selection, JSCC encoder, receiver KB) with the DiT end to end. The
segmentation stage with `train.segmentation.shared=True` (the paper preset) freezes those parts at the
reconstruction stage's weights from the same workdir and trains only the segmentation decoder, so one
transmitter serves both tasks; it needs the reconstruction stage trained first. With `shared=False` (the
smoke preset, so that it runs on its own) segmentation trains its own chain end to end.

Presets (the part after ':' in --config=configs/multitask_seg.py:PRESET):
  ''      the paper: 224 x 224 training, DIV2K / PASCAL VOC 2012, Table I model, DiT-XL/2 decoder, AdamW
          (lr 1e-4, betas (0.5, 0.999), weight decay 0.01; section V-A).
  'smoke' the whole job offline on 2 CPU cores in a few minutes: embedded data (real VOC masks with
          synthetic images), the 'tiny' model at 64 x 64, T = 100, 1500 (reconstruction) or 3000 (segmentation) steps.

Not in the paper, so chosen here: batch size, number of steps, training SNR set, EMA, sampler. The SNR
axes of Figs. 4, 5 and 7 are not given numerically in the text; the sweeps below cover the range the text
discusses (0 dB upwards with the SNR = 18 dB visualisation for reconstruction; below 0 dB up to above
18 dB for segmentation).
"""

from __future__ import annotations

import ml_collections

from configs import common
from multitask_jax.jscc import max_channels_for_budget
from multitask_jax.system import model_config
from multitask_jax.tasks import TASKS

RECON_SNRS = (0.0, 3.0, 6.0, 9.0, 12.0, 15.0, 18.0, 21.0)
SEG_SNRS = (-6.0, -3.0, 0.0, 3.0, 6.0, 9.0, 12.0, 15.0, 18.0, 21.0)


def _data(task: str) -> ml_collections.ConfigDict:
    """The data section of `task`; the image size comes from `model.image_size`."""
    if task == "reconstruction":
        # Training: random crops at model.image_size. Validation: the paper's 224x224 and 768x512 (W x H).
        return common.data("tfds:div2k", eval_split="validation", eval_sizes=((224, 224), (512, 768)))
    return common.data("tfds:voc2012_segmentation", eval_split="validation", manual_dir=common.unset(str))


def _optim(num_steps: int, ema_decay: float, **extra) -> ml_collections.ConfigDict:
    """AdamW of section V-A; `num_steps` > 0 overrides `epochs`."""
    return ml_collections.ConfigDict(
        dict(
            base_lr=1e-4,
            scale_lr=False,
            b1=0.5,
            b2=0.999,
            weight_decay=0.01,
            clip_norm=common.unset(float),
            epochs=common.unset(int),
            num_steps=num_steps,
            ema_decay=ema_decay,  # 0 disables the EMA (evaluation then uses the raw weights)
            **extra,
        )
    )


def base_config(task: str, preset: str = "") -> ml_collections.ConfigDict:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    # Both tasks train into the same workdir (one multi-task model); `task` is the one this config trains and
    # evaluates (transmit picks its task from --task).
    c = common.experiment("multitask", "multitask", task=task)

    model = model_config("paper")
    del model["channel"]  # the channel is configured below, with the SNR sets
    # C_out = 3: 14 x 14 x 3 reals = 294 channel uses = 18,816 bits <= the 20 Kbit budget of section V-C
    # (multitask_jax.jscc states the bit accounting). One C_out for both tasks: the encoder is shared.
    model.jscc.channels = max_channels_for_budget(model.image_size, 20_000, model.jscc.downsample)
    c.model = model
    snrs = RECON_SNRS if task == "reconstruction" else SEG_SNRS
    c.channel = common.channel(train_snrs=snrs, eval_snrs=snrs)  # or kind='rayleigh' (block fading, one h per image)
    c.data = _data(task)
    # x0-prediction DiT sampled with DDIM (deterministic) on 50 uniformly spaced steps of T = 1000.
    c.sampler = common.sampler("ddim", steps=50)

    c.train = common.train(batch_size=16)
    c.train.reconstruction = _optim(num_steps=100_000, ema_decay=0.9999)
    c.train.segmentation = _optim(num_steps=20_000, ema_decay=0.0, shared=True)
    # Progressive distillation of the DiT after the reconstruction stage (the shared toolkit's rounds, as CASC's
    # train.distill; configs/casc_base.py describes the fields), off while rounds = 0.
    c.train.distill = _optim(
        num_steps=1000, ema_decay=0.9999, rounds=0, teacher_steps=common.unset(int), weighting="truncated_snr"
    )

    # grid_snrs: rows of the visual grids (Fig. 6 is at 18 dB)
    c.eval = common.evaluation(batch_size=16, grid_images=6, grid_snrs=(0.0, 9.0, 18.0))
    return common.apply_preset(c, preset, {"smoke": _smoke})


def _smoke(c: ml_collections.ConfigDict) -> None:
    tiny = model_config("tiny")
    del tiny["channel"]
    c.model = tiny  # Swin embed 12, DiT hidden 32 / depth 2
    c.model.image_size = (64, 64)  # channel input 4 x 4 x 4: 32 channel uses
    # T = 100 with the T = 1000 betas scaled by 1000 / T (as DDPM's schedule rule), so that abar_T ~ 4e-5
    # and x_T is pure noise as at T = 1000 (betas 1e-4..0.02 over 100 steps would leave abar_T ~ 0.37).
    c.model.diffusion.update(num_timesteps=100, beta_start=1e-3, beta_end=0.2)
    c.data.source = "embedded"
    if c.task == "reconstruction":
        c.data.eval_sizes = ((64, 64), (64, 96))  # square and wide, as the paper's two validation sizes
    c.channel.train_snrs = (0.0, 10.0, 20.0)
    c.channel.eval_snrs = (0.0, 10.0, 20.0)
    c.sampler.steps = 10
    c.train.batch_size = 8
    c.train.log_every = 100
    c.train.checkpoint_every = 500
    c.train.reconstruction.update(num_steps=1500, ema_decay=0.0)
    c.train.segmentation.update(num_steps=3000, shared=False)  # runs on its own (see the module docstring)
    c.train.distill.update(num_steps=10, ema_decay=0.9)  # rounds stays 0
    c.eval.update(batch_size=8, num_images=16, grid_images=6, grid_snrs=(0.0, 20.0))
