"""The only entry point: python launch.py --config=configs/casc_cr48.py[:PRESET] [--mode=...] [--workdir=...].

Modes: train (default: stage 1, stage 2, then the evaluation sweep), eval, sample, transmit.
Config fields are overridden with --config.FIELD=VALUE, e.g. --config.train.batch_size=64.
"""

from __future__ import annotations

import importlib
import os
import sys

from absl import app, flags
from ml_collections import config_flags

SYSTEMS = {"casc": "casc_jax.run"}

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file[:preset]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory (default: runs/<config name>[_smoke])")
_MODE = flags.DEFINE_string("mode", "train", "train | eval | sample | transmit")
_IMAGES = flags.DEFINE_multi_string("image", [], "transmit: an image file (repeat for several)")
_SNRS = flags.DEFINE_list("snr", [], "transmit: SNRs in dB (default: the config's eval SNRs)")
_FIT = flags.DEFINE_enum("fit", "pad", ["pad", "crop"], "transmit: letterbox (pad) or centre-crop")
_OUT = flags.DEFINE_string("out", None, "transmit: output folder (default WORKDIR/transmit)")


def main(argv):
    del argv
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/casc_cr48.py:smoke")
    runner = importlib.import_module(SYSTEMS[config.system]) if config.system in SYSTEMS else None
    if runner is None:
        raise app.UsageError(f"unknown system {config.system!r}; known: {sorted(SYSTEMS)}")
    if _MODE.value not in runner.MODES:
        raise app.UsageError(f"unknown mode {_MODE.value!r} for {config.system}; choose one of {sorted(runner.MODES)}")

    from casc_jax.train.parallel import maybe_initialize_distributed

    maybe_initialize_distributed()
    preset = "_smoke" if config.data.source == "embedded" else ""
    workdir = os.path.abspath(_WORKDIR.value or os.path.join("runs", config.name + preset))
    os.makedirs(workdir, exist_ok=True)
    options = {
        "images": _IMAGES.value,
        "snrs": tuple(float(s) for s in _SNRS.value),
        "fit": _FIT.value,
        "out_dir": _OUT.value,
    }
    print(f"[launch] system {config.system}, mode {_MODE.value}, workdir {workdir}", flush=True)
    runner.MODES[_MODE.value](config, workdir, options, echo=lambda s: print(s, flush=True))


if __name__ == "__main__":
    sys.exit(app.run(main))
