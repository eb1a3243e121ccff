"""Multi-task baseline: JPEG + LDPC + 16/64QAM + FCN segmentation (Fig. 7) and the digital PSNR curve (Figs. 4, 5).

Presets '' (paper), 'smoke' and 'cpu' (real photos / CamVid on 2 CPU cores); see configs/mt_baselines_base.py.
"""

from configs.mt_baselines_base import base_config


def get_config(arg: str = ""):
    return base_config("fcn_digital", preset=arg)
