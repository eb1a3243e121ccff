"""The baselines the CASC paper compares against: DeepJSCC (MSE / LPIPS) and DiffSC."""

from casc_jax.casc.baselines.deepjscc import DeepJSCC, DeepJSCCDecoder, DeepJSCCEncoder, build_deepjscc
from casc_jax.casc.baselines.diffsc import DiffSC, build_diffsc

__all__ = [
    "DeepJSCC",
    "DeepJSCCDecoder",
    "DeepJSCCEncoder",
    "DiffSC",
    "build_deepjscc",
    "build_diffsc",
]
