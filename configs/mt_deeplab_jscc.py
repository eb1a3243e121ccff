"""Multi-task baseline: Deeplab-JSCC, atrous conv / ASPP segmentation over the channel: mIoU vs SNR (Fig. 7).

Presets '' (paper), 'smoke' and 'cpu' (real photos / CamVid on 2 CPU cores); see configs/mt_baselines_base.py.
"""

from configs.mt_baselines_base import base_config


def get_config(arg: str = ""):
    return base_config("deeplab_jscc", preset=arg)
