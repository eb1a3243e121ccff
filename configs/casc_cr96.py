"""CASC at CR 1/96 (d = 64 reals, L = 1 condition channels on the 8x8 latent). Presets: '' and 'smoke'."""

from configs.casc_base import base_config


def get_config(arg: str = ""):
    return base_config(cr="1/96", use_can=True, preset=arg)
