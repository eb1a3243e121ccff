"""Launcher modes of the digital baseline (configs/mt_fcn_digital.py): train (the FCN), eval (the FCN over
JPEG + LDPC + QAM, and the digital PSNR curve), transmit; see multitask_jax.baselines.run."""

from multitask_jax.baselines.run import DIGITAL_MODES as MODES
from multitask_jax.baselines.run import DIGITAL_SYSTEM as SYSTEM

__all__ = ["MODES", "SYSTEM"]
