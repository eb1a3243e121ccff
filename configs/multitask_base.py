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
  'cpu'   real photos (reconstruction) and CamVid (segmentation, 11 classes) on 2 CPU cores, Rayleigh fading,
          128 x 128 crops, the 'small' model, steps sized by measured step time (`_cpu`); the data sources are
          placeholders that `python -m multitask_jax.tools.reproduce --data=DIR` replaces.

Not in the paper, so chosen here: batch size, number of steps, training SNR set, EMA, sampler. The SNR
axes of Figs. 4, 5 and 7 are not given numerically in the text; the sweeps below cover the range the text
discusses (0 dB upwards with the SNR = 18 dB visualisation for reconstruction; below 0 dB up to above
18 dB for segmentation).
"""

from __future__ import annotations

import ml_collections

from configs import common
from configs.multitask_models_base import CAMVID_NUM_CLASSES, model_config
from multitask_jax.channel_budget import max_channels_for_budget
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
    # dir: the folder under WORKDIR the sweep writes (a second sweep of the same checkpoints, e.g. over AWGN,
    # writes beside the first with --config.eval.dir=eval_awgn); method: the records' method name (default ours).
    c.eval = common.evaluation(
        batch_size=16, grid_images=6, grid_snrs=(0.0, 9.0, 18.0), dir="eval", method=common.unset(str)
    )
    return common.apply_preset(c, preset, {"smoke": _smoke, "cpu": _cpu})


# -- the 'cpu' preset: the real photos and CamVid on 2 CPU cores (python -m multitask_jax.tools.reproduce) ----------
CPU_SNRS = (0.0, 4.0, 8.0, 12.0, 16.0, 20.0)  # training and evaluation SNRs (dB), Rayleigh block fading
# The visual rows' SNRs: reconstruction at Fig. 6's 18 dB, segmentation at 10 dB; a grid SNR outside CPU_SNRS
# is run on the first evaluation batch only (multitask_jax.evaluate), for its row of images.
CPU_GRID_SNRS = {"reconstruction": (0.0, 10.0, 18.0), "segmentation": (0.0, 10.0, 20.0)}
CPU_IMAGE_SIZE = (128, 128)  # random training crops; CamVid segmentation is trained and evaluated at 128 x 128
CPU_EVAL_SIZES = ((224, 224), (512, 768))  # Fig. 4 (224x224 centre crops) and Fig. 5 (768x512, W x H)
# C_out: the paper's 20 Kbit budget at 224 x 224 (max_channels_for_budget: C_out = 3, 294 channel uses =
# 18,816 bits). Every learned method of the cpu presets sends this C_out on the same H/16 x W/16 grid, so all
# send k = (H/16)(W/16) * 3 / 2 channel uses per image: 96 at the 128 x 128 training crops and CamVid
# evaluation, 294 at 224 x 224, 2,304 at 768 x 512.
CPU_BUDGET_SIZE = (224, 224)
CPU_BATCH = 16
CPU_LR = 2e-4  # AdamW of section V-A at twice its rate: the runs are 3 orders of magnitude shorter
# Placeholders the reproduction replaces (--config.data.source=... from its --data flag); on their own they
# fail at once with one line naming the missing folder. The project does not depend on any data folder.
CPU_PHOTOS_SOURCE = "photos:PHOTOS_DIR,eval=CUrban100,camvid=CAMVID_DIR"
CPU_CAMVID_SOURCE = "camvid:CAMVID_DIR"
CPU_EVAL_IMAGES = 32  # reconstruction: the first 32 evaluation photos at each size; segmentation: all of CamVid val
# Seconds per batch-16 step at 128 x 128, measured 2026-12-06 on this machine (2 cores) while another training
# job used both cores (load average 3.5-5; our process at nice 19): upper bounds for a quiet machine. Mean of 12
# steps after the compile (67 s / 13 s), random data, the jitted train step of `multitask_jax.train`.
CPU_STEP_SECONDS = {"reconstruction": 3.675, "segmentation": 0.445}  # 10.26M / 0.15M trainable parameters
# Steps: about 35 minutes of training each at those step times (600 x 3.675 s = 36.8 min; 4700 x 0.445 s =
# 34.9 min). Reconstruction sees 9,600 crops (18 epochs of its 534 training photos); segmentation trains only
# the head on the frozen transmitter, 205 epochs of CamVid train.
CPU_STEPS = {"reconstruction": 600, "segmentation": 4700}


def cpu_data(task: str) -> ml_collections.ConfigDict:
    """The data section of the cpu presets (placeholder sources; see CPU_PHOTOS_SOURCE)."""
    d = _data(task)
    if task == "reconstruction":
        d.update(source=CPU_PHOTOS_SOURCE, eval_sizes=CPU_EVAL_SIZES)
    else:
        d.update(source=CPU_CAMVID_SOURCE)
    return d


def cpu_channel() -> ml_collections.ConfigDict:
    """Rayleigh block fading (one h per image, MMSE equaliser) at CPU_SNRS; --config.channel.kind=awgn for AWGN."""
    c = common.channel(train_snrs=CPU_SNRS, eval_snrs=CPU_SNRS, kind="rayleigh")
    c.equalizer = "mmse"
    return c


def _cpu(c: ml_collections.ConfigDict) -> None:
    """Real photos (reconstruction) and CamVid (segmentation, 11 classes) on 2 CPU cores.

    Data (passed by `python -m multitask_jax.tools.reproduce --data=DIR`): reconstruction trains on random 128 x 128
    crops (with flips) of the photo set minus Urban100 (BSD68, Set5, Set14, Sun-Hays: 167 photos) plus CamVid's
    367 train photos, and is evaluated on the first CPU_EVAL_IMAGES Urban100 photos (about 1024 x 768) at
    224 x 224 (resized to cover, centre crop: Fig. 4) and 768 x 512 (Fig. 5); segmentation trains on random
    128 x 128 crops of CamVid train (shorter side resized to 128) and is evaluated on the centre 128 x 128
    crop of all 101 CamVid val photos at that scale (`data.CAMVID_EVAL`), void (11) ignored by loss and mIoU.
    Channel: Rayleigh block fading, MMSE equaliser, SNR drawn per example from 0..20 dB step 4 (evaluated at
    the same SNRs).

    Model: the 'small' multi-task model (Swin embed 48, depths 2/2/2, window 7; DiT hidden 256, depth 6,
    4 heads, patch 2 on the /8 pixel grid) with C_out = 3 (the budget of CPU_BUDGET_SIZE), the segmentation
    head with 11 classes, T = 1000, DDIM with 10 uniform steps at evaluation. Batch 16, AdamW at CPU_LR.

    Step time, measured 2026-12-06 on this machine while another training job used both cores (so these are
    upper bounds for a quiet machine), batch 16 at 128 x 128, mean of 12 steps after the compile:
    reconstruction 3.675 s/step (10.26M trainable parameters, the DiT most of them), segmentation (the head
    alone on the frozen transmitter) 0.445 s/step. Chosen: 600 reconstruction steps (36.8 min) and 4,700
    segmentation steps (34.9 min); CPU_STEP_SECONDS and CPU_STEPS. With more time, raise the reconstruction
    steps first (600 steps is 18 epochs of the 534 training photos).
    """
    small = model_config("small")
    del small["channel"]
    small.image_size = CPU_IMAGE_SIZE
    small.jscc.channels = max_channels_for_budget(CPU_BUDGET_SIZE, 20_000, small.jscc.downsample)
    small.seg.num_classes = CAMVID_NUM_CLASSES
    c.model = small
    c.channel = cpu_channel()
    c.data = cpu_data(c.task)
    c.sampler.update(name="ddim", steps=10, spacing="uniform")
    c.train.update(batch_size=CPU_BATCH, log_every=50, checkpoint_every=250)
    c.train.reconstruction.update(num_steps=CPU_STEPS["reconstruction"], base_lr=CPU_LR, ema_decay=0.999)
    c.train.segmentation.update(num_steps=CPU_STEPS["segmentation"], base_lr=CPU_LR)  # shared=True: the paper's
    c.eval.update(
        batch_size=8,
        num_images=CPU_EVAL_IMAGES if c.task == "reconstruction" else None,
        grid_images=6,
        grid_snrs=CPU_GRID_SNRS[c.task],
    )


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
