"""The multi-task paper's baselines (section V), shared by configs/mt_<baseline>.py.

Each baseline trains one task with the multi-task system's loop (`multitask_jax.train`: one SNR per example
from `channel.train_snrs`, AdamW of section V-A, the same steps, batch and EMA as our stage of that task)
on the same data and image size, and is evaluated on the same SNR grid:

    mt_deepjscc, mt_adjscc, mt_witt   reconstruction (DIV2K; 224x224 and 768x512 validation: Figs. 4, 5)
    mt_deeplab_jscc                   segmentation (PASCAL VOC 2012, 21 classes: Fig. 7)
    mt_fcn_digital                    JPEG + LDPC + 16/64QAM + FCN segmentation (Fig. 7) and the digital
                                      JPEG + LDPC + QAM PSNR curve on the reconstruction data (Figs. 4, 5)

Budget: `model.channels` is our system's C_out (`max_channels_for_budget`, 3 at 224 x 224), so every JSCC
baseline sends our k = (H/16)(W/16) C_out / 2 complex channel uses per image (294 at 224 x 224); the digital
scheme gets `digital.budget_bits` = 20,000 bits (reading 'bits' of multitask_jax/digital/budget.py).

Presets: '' (paper sizes; the layer sizes of each baseline's original paper, see its module docstring) and
'smoke' (embedded data at 64 x 64 with the tiny model's C_out = 4, i.e. 32 channel uses like the multi-task
smoke run, small widths, a few hundred steps; offline on 2 CPU cores in minutes; not an experiment) and
'cpu' (real photos / CamVid beside our cpu preset, at our channel uses; see `_cpu`).
"""

from __future__ import annotations

import ml_collections

from configs import common, multitask_base
from configs.multitask_models_base import CAMVID_NUM_CLASSES, VOC_NUM_CLASSES, model_config
from multitask_jax.channel_budget import max_channels_for_budget

# baseline -> (config.system, task, model section)
BASELINES = {
    "deepjscc": ("mt_deepjscc", "reconstruction", "deepjscc"),
    "adjscc": ("mt_adjscc", "reconstruction", "adjscc"),
    "witt": ("mt_witt", "reconstruction", "witt"),
    "deeplab_jscc": ("mt_deeplab_jscc", "segmentation", "deeplab"),
    "fcn_digital": ("mt_fcn_digital", "segmentation", "fcn"),
}
BUDGET_BITS = 20_000  # section V-C: "bounded by 20 Kbits"

# Layer sizes of the original papers (module docstrings of multitask_jax/baselines/*) and the smoke sizes.
PAPER = {
    "deepjscc": dict(filters=(16, 32, 32, 32), kernel_size=5),
    "adjscc": dict(filters=(256, 256, 256, 256), kernel_size=5),
    "witt": dict(widths=(128, 192, 256, 320), depths=(2, 2, 6, 2), heads=(4, 6, 8, 10), window=8, mlp_ratio=4.0,
                 modnet_layers=7),
    # DeepLab's rates (6, 12, 18) are for a 33 x 33 grid (513 crops); scaled by 14/33 for the 14 x 14 grid.
    "deeplab": dict(widths=(64, 128, 256, 512), features=256, rates=(3, 5, 8), dropout=0.1,
                    num_classes=VOC_NUM_CLASSES),
    "fcn": dict(widths=(64, 128, 256, 512), dropout=0.1, num_classes=VOC_NUM_CLASSES),
}
SMOKE = {
    "deepjscc": dict(filters=(16, 32, 32, 32)),
    "adjscc": dict(filters=(16, 16, 16, 16)),
    "witt": dict(widths=(8, 12, 16, 16), depths=(1, 1, 1, 1), heads=(1, 1, 2, 2), window=4, mlp_ratio=2.0,
                 modnet_layers=2),
    "deeplab": dict(widths=(8, 16, 16, 32), features=16, rates=(1, 2, 3)),
    "fcn": dict(widths=(8, 16, 16, 32)),
}
SMOKE_STEPS = 200
# The cpu presets' layer sizes (2 CPU cores, 128 x 128 training crops): each baseline's layout, narrowed.
CPU = {
    "deepjscc": dict(filters=(16, 32, 32, 32)),  # the paper's sizes are already small
    "adjscc": dict(filters=(32, 32, 32, 32)),
    "witt": dict(widths=(32, 48, 64, 96), depths=(1, 1, 2, 1), heads=(2, 2, 4, 4), window=8, mlp_ratio=2.0,
                 modnet_layers=3),
    "deeplab": dict(widths=(16, 32, 64, 128), features=64, rates=(1, 2, 3), num_classes=CAMVID_NUM_CLASSES),
    "fcn": dict(widths=(16, 32, 64, 128), num_classes=CAMVID_NUM_CLASSES),
}
# Seconds per batch-16 step at 128 x 128 (CPU sizes), measured 2026-12-06 on this machine (2 cores) while another
# training job used both cores (load average 3.5-5; ours at nice 19): upper bounds for a quiet machine. Mean of
# 12 steps after the compile, random data, the jitted step of `multitask_jax.train.make_loss_step`. ADJSCC at
# 64 filters took 3.876 s (0.67M parameters), hence 32. (trainable parameters in the comments)
CPU_STEP_SECONDS = {
    "deepjscc": 0.881,  # 0.14M
    "adjscc": 1.672,  # 0.17M
    "witt": 2.971,  # 0.87M
    "deeplab_jscc": 0.288,  # 0.93M
    "fcn_digital": 0.249,  # 0.49M (the FCN; trained on clean images, the digital link is evaluation only)
}
# Steps: about 35 minutes of training each at those step times (equal wall time, not equal steps):
# 2400 x 0.881 = 35.2 min, 1250 x 1.672 = 34.8, 700 x 2.971 = 34.7, 7000 x 0.288 = 33.6, 8000 x 0.249 = 33.2.
CPU_STEPS = {"deepjscc": 2400, "adjscc": 1250, "witt": 700, "deeplab_jscc": 7000, "fcn_digital": 8000}


def base_config(baseline: str, preset: str = "") -> ml_collections.ConfigDict:
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; choose one of {tuple(BASELINES)}")
    system, task, section = BASELINES[baseline]
    c = common.experiment(system, system, task=task, baseline=baseline)
    ours = model_config("paper")
    channels = max_channels_for_budget(ours.image_size, BUDGET_BITS, ours.jscc.downsample)
    c.model = ml_collections.ConfigDict(dict(image_size=ours.image_size, channels=channels))
    c.model[section] = PAPER[section]
    snrs = multitask_base.RECON_SNRS if task == "reconstruction" else multitask_base.SEG_SNRS
    c.channel = common.channel(train_snrs=snrs, eval_snrs=snrs)
    c.data = multitask_base._data(task)
    c.train = common.train(batch_size=16)
    ours_train = multitask_base.base_config(task).train[task]  # our stage of this task: steps, EMA, AdamW
    c.train[task] = ml_collections.ConfigDict({k: v for k, v in ours_train.items() if k != "shared"})
    c.eval = common.evaluation(batch_size=16, grid_images=6, grid_snrs=(0.0, 9.0, 18.0))
    if system == "mt_fcn_digital":
        c.digital = ml_collections.ConfigDict(
            dict(budget_bits=BUDGET_BITS, modulations=("16qam", "64qam"), code_rate=0.5, iterations=20)
        )
        c.recon_data = multitask_base._data("reconstruction")  # the digital PSNR curve (Figs. 4, 5)
        # how many evaluation photos it scores (unset: all), as eval.num_images does for the learned methods
        c.recon_data.eval_images = common.unset(int)
    return common.apply_preset(c, preset, {"smoke": _smoke, "cpu": _cpu})


def _cpu(c: ml_collections.ConfigDict) -> None:
    """The real photos / CamVid on 2 CPU cores, beside configs/multitask_base.py's cpu preset: the same data
    (placeholder sources that `python -m multitask_jax.tools.reproduce` replaces), 128 x 128 training crops, the
    same evaluation sizes and images, Rayleigh block fading (MMSE) at 0..20 dB step 4, batch 16, AdamW at the
    same rate, and our C_out = 3 on the same H/16 x W/16 grid: every learned method sends 96 channel uses per
    128 x 128 image, 294 per 224 x 224 image (our 20 Kbit budget, 18,816 bits) and 2,304 per 768 x 512 image.
    The digital scheme keeps `digital.budget_bits` = 20,000 bits per image. CamVid: 11 classes in the
    Deeplab / FCN heads, void ignored.

    Layer sizes: CPU (the original layouts narrowed). Steps: CPU_STEPS, from the step time measured on
    2026-12-06 under load (another training job on both cores: upper bounds), batch 16 at 128 x 128, about
    35 minutes each: Deep JSCC 0.881 s/step -> 2,400 steps; ADJSCC (32 filters; 64 took 3.876 s) 1.672 ->
    1,250; WITT 2.971 -> 700; Deeplab-JSCC 0.288 -> 7,000; the FCN of the digital scheme 0.249 -> 8,000
    (CPU_STEP_SECONDS). Our stages: configs/multitask_base.py (3.675 s -> 600, 0.445 s -> 4,700).
    """
    section = BASELINES[c.baseline][2]
    c.model.image_size = multitask_base.CPU_IMAGE_SIZE
    c.model.channels = max_channels_for_budget(multitask_base.CPU_BUDGET_SIZE, BUDGET_BITS, 2)
    c.model[section].update(CPU[section])
    c.channel = multitask_base.cpu_channel()
    c.data = multitask_base.cpu_data(c.task)
    c.train.update(batch_size=multitask_base.CPU_BATCH, log_every=50, checkpoint_every=250)
    c.train[c.task].update(num_steps=CPU_STEPS[c.baseline], base_lr=multitask_base.CPU_LR,
                           ema_decay=0.999 if c.task == "reconstruction" else 0.0)
    c.eval.update(batch_size=8, num_images=multitask_base.CPU_EVAL_IMAGES if c.task == "reconstruction" else None,
                  grid_images=6, grid_snrs=multitask_base.CPU_GRID_SNRS[c.task])
    if "recon_data" in c:
        c.recon_data = multitask_base.cpu_data("reconstruction")
        c.recon_data.eval_images = multitask_base.CPU_EVAL_IMAGES  # the learned methods' photos


def _smoke(c: ml_collections.ConfigDict) -> None:
    tiny = model_config("tiny")
    c.model.image_size = (64, 64)
    c.model.channels = tiny.jscc.channels  # 4 x 4 x 4 reals: 32 channel uses, as the multi-task smoke run
    section = BASELINES[c.baseline][2]
    c.model[section].update(SMOKE[section])
    c.data.source = "embedded"
    if c.task == "reconstruction":
        c.data.eval_sizes = ((64, 64), (64, 96))
    c.channel.train_snrs = (0.0, 10.0, 20.0)
    c.channel.eval_snrs = (0.0, 10.0, 20.0)
    c.train.update(batch_size=8, log_every=50, checkpoint_every=100)
    c.train[c.task].update(num_steps=SMOKE_STEPS, ema_decay=0.0, base_lr=1e-3)
    c.eval.update(batch_size=8, num_images=16, grid_images=6, grid_snrs=(0.0, 20.0))
    if "recon_data" in c:
        c.recon_data.source = "embedded"
        c.recon_data.eval_sizes = ((64, 64), (64, 96))
        c.digital.iterations = 10
