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
scheme gets `digital.budget_bits` = 20,000 bits (reading 'bits' of casc_jax/digital/budget.py).

Presets: '' (paper sizes; the layer sizes of each baseline's original paper, see its module docstring) and
'smoke' (embedded data at 64 x 64 with the tiny model's C_out = 4, i.e. 32 channel uses like the multi-task
smoke run, small widths, a few hundred steps; offline on 2 CPU cores in minutes; not an experiment).
"""

from __future__ import annotations

import ml_collections

from configs import common, multitask_base
from multitask_jax.jscc import max_channels_for_budget
from multitask_jax.system import model_config

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
    "deeplab": dict(widths=(64, 128, 256, 512), features=256, rates=(3, 5, 8), dropout=0.1, num_classes=21),
    "fcn": dict(widths=(64, 128, 256, 512), dropout=0.1, num_classes=21),
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
    return common.apply_preset(c, preset, {"smoke": _smoke})


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
