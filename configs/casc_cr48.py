"""CASC at CR 1/48 (d = 128 reals, L = 2 condition channels on the 8x8 latent). Presets: '' and 'smoke'."""

from configs.casc_base import base_config


def get_config(arg: str = ""):
    return base_config(cr="1/48", use_can=True, preset=arg)
