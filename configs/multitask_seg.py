"""Multi-task system, segmentation task (PASCAL VOC 2012, mIoU vs SNR: the paper's Fig. 7).

Presets '' (paper: the shared transmitter of the reconstruction stage in the same workdir, frozen),
'smoke' (segmentation end to end on its own) and 'cpu' (CamVid, 11 classes, on the cpu reconstruction stage's
frozen transmitter); see configs/multitask_base.py.
"""

from configs.multitask_base import base_config


def get_config(arg: str = ""):
    return base_config("segmentation", preset=arg)
