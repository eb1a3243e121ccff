"""Multi-task system, reconstruction task (DIV2K, PSNR vs SNR: the paper's Figs. 4 and 5).

Presets '' (paper), 'smoke' and 'cpu' (real photos / CamVid on 2 CPU cores); see configs/multitask_base.py.
"""

from configs.multitask_base import base_config


def get_config(arg: str = ""):
    return base_config("reconstruction", preset=arg)
