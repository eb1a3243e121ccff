"""The only entry point: python launch.py --config=configs/casc_cr48.py[:PRESET] [--mode=...] [--workdir=...].

Modes: train (default: stage 1, stage 2, then the evaluation sweep), eval, sample, transmit; and
compare (--workdirs=A,B,... [--out=DIR]: the methods' figures and tables side by side, no --config).
Config fields are overridden with --config.FIELD=VALUE, e.g. --config.train.batch_size=64.
"""

from __future__ import annotations

import importlib
import os
import sys

from absl import app, flags
from ml_collections import config_flags

SYSTEMS = {
    "casc": "casc_jax.run",
    "deepjscc": "casc_jax.baselines_run",
    "diffsc": "casc_jax.baselines_run",
    "multitask": "multitask_jax.run",
}

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file[:preset]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory (default: runs/<config name>[_smoke])")
_MODE = flags.DEFINE_string(
    "mode", "train", "train | eval | sample | transmit | benchmark | quality (CASC) | compare"
)
_IMAGES = flags.DEFINE_multi_string("image", [], "transmit: an image file (repeat for several)")
_SNRS = flags.DEFINE_list("snr", [], "transmit: SNRs in dB (default: the config's eval SNRs)")
_FIT = flags.DEFINE_enum("fit", "pad", ["pad", "crop"], "transmit: letterbox (pad) or centre-crop")
_OUT = flags.DEFINE_string("out", None, "transmit: output folder (default WORKDIR/transmit); compare: (default "
                           "--workdir, else runs/compare)")
_WORKDIRS = flags.DEFINE_list("workdirs", [], "compare: evaluated workdirs to put side by side (no --config needed)")
_TASK = flags.DEFINE_string("task", None, "transmit (multitask): the task in free text, e.g. \"segment the image\"")


def main(argv):
    del argv
    if _MODE.value == "compare":  # system-independent: reads the workdirs' eval/metrics.json
        from casc_jax import compare

        compare.compare(_WORKDIRS.value, _OUT.value or _WORKDIR.value or os.path.join("runs", "compare"))
        return
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
        "task": _TASK.value,
    }
    print(f"[launch] system {config.system}, mode {_MODE.value}, workdir {workdir}", flush=True)
    runner.MODES[_MODE.value](config, workdir, options, echo=lambda s: print(s, flush=True))


if __name__ == "__main__":
    sys.exit(app.run(main))
