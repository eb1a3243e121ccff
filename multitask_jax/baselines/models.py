"""The baselines' registry: `config.system` -> the model built from the config's `model` section.

    mt_deepjscc      DeepJSCC           reconstruction   model.deepjscc
    mt_adjscc        ADJSCC             reconstruction   model.adjscc
    mt_witt          WITT               reconstruction   model.witt
    mt_deeplab_jscc  Deeplab-JSCC       segmentation     model.deeplab
    mt_fcn_digital   JPEG+LDPC+QAM+FCN  segmentation     model.fcn, digital (and the digital PSNR curve)

`model.channels` is the multi-task system's C_out, so every JSCC baseline gets its channel uses
(`multitask_jax.baselines.common`).
"""

from __future__ import annotations

from collections.abc import Sequence

from multitask_jax.baselines import adjscc, deepjscc, deeplab_jscc, fcn_digital, witt

JSCC = {
    "mt_deepjscc": (deepjscc, "deepjscc"),
    "mt_adjscc": (adjscc, "adjscc"),
    "mt_witt": (witt, "witt"),
    "mt_deeplab_jscc": (deeplab_jscc, "deeplab"),
}
DIGITAL = "mt_fcn_digital"
SYSTEMS = (*JSCC, DIGITAL)
LABELS = {
    "multitask": "Ours (multi-task)",
    "multitask_awgn": "Ours (multi-task), AWGN",
    "deepjscc": "Deep JSCC",
    "adjscc": "ADJSCC",
    "witt": "WITT",
    "deeplab_jscc": "Deeplab JSCC",
    "fcn_digital_16qam": "JPEG+LDPC+16QAM+FCN",
    "fcn_digital_64qam": "JPEG+LDPC+64QAM+FCN",
    "jpeg_ldpc_16qam": "JPEG+LDPC+16QAM",
    "jpeg_ldpc_64qam": "JPEG+LDPC+64QAM",
}


def image_hw(config) -> tuple[int, int]:
    size = config.model.image_size
    return (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)


def build_model(config, image_size: Sequence[int] | None = None):
    """The baseline of `config.system` at `image_size` (H, W) (default `model.image_size`)."""
    hw = tuple(int(s) for s in image_size) if image_size is not None else image_hw(config)
    kind, eq = config.channel.kind, config.channel.equalizer
    if config.system == DIGITAL:
        return fcn_digital.build(config.model.fcn, hw, config.digital, kind, eq)
    if config.system not in JSCC:
        raise ValueError(f"unknown multi-task baseline {config.system!r}; known: {', '.join(SYSTEMS)}")
    module, section = JSCC[config.system]
    return module.build(config.model[section], hw, int(config.model.channels), kind, eq)
