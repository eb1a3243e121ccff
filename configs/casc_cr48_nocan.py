"""The ablation of Fig. 8: CASC at CR 1/48 without the CAN. Presets: '' and 'smoke'."""

from configs.casc_base import base_config


def get_config(arg: str = ""):
    return base_config(cr="1/48", use_can=False, preset=arg)
