"""DeepJSCC trained with the MSE loss at CR 1/48 (the CASC paper's "DeepJSCC (MSE)"). Presets: '' and 'smoke'."""

from configs.deepjscc_base import deepjscc_config


def get_config(arg: str = ""):
    return deepjscc_config(loss="mse", cr="1/48", preset=arg)
