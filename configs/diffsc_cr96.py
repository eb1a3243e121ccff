"""DiffSC (Jiang et al., ICASSP 2024) at CR 1/96: DeepJSCC-MSE stage, then the conditional DDPM U-Net.

Presets: '' and 'smoke'. Reuse a trained DeepJSCC-MSE with --config.diffsc.deepjscc_workdir=runs/deepjscc_mse_cr96.
"""

from configs.deepjscc_base import diffsc_config


def get_config(arg: str = ""):
    return diffsc_config(cr="1/96", preset=arg)
