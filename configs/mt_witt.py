"""Multi-task baseline: WITT (Yang et al. 2023), Swin JSCC with SNR-adaptive modulation: PSNR vs SNR (Figs. 4, 5).

Presets '' (paper), 'smoke' and 'cpu' (real photos / CamVid on 2 CPU cores); see configs/mt_baselines_base.py.
"""

from configs.mt_baselines_base import base_config


def get_config(arg: str = ""):
    return base_config("witt", preset=arg)
