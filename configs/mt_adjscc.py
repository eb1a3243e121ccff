"""Multi-task baseline: ADJSCC (Xu et al. 2021), reconstruction with SNR-adaptive attention: PSNR vs SNR (Figs. 4, 5).

Presets '' (paper), 'smoke' and 'cpu' (real photos / CamVid on 2 CPU cores); see configs/mt_baselines_base.py.
"""

from configs.mt_baselines_base import base_config


def get_config(arg: str = ""):
    return base_config("adjscc", preset=arg)
