"""The only entry point: python launch.py --config=configs/casc_cr48.py[:PRESET] [--mode=...] [--workdir=...].

Modes: train (default: stage 1, stage 2, then the evaluation sweep), eval, sample, transmit; and
compare (--workdirs=A,B,... [--out=DIR]: the methods' figures and tables side by side, no --config).
Config fields are overridden with --config.FIELD=VALUE, e.g. --config.train.batch_size=64.

Flags, config fields, paths and images are checked before JAX starts; a mistake ends with one line
`error: ...` and exit code 2 (--verbose or CASC_VERBOSE=1 adds the traceback and the libraries' logs).
A run holds WORKDIR/.lock, so a second run on the same workdir refuses at once.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from casc_jax import cli
from casc_jax import workdir as workdir_lib
from casc_jax.cli import UserError

log = logging.getLogger("casc_jax.launch")  # printed by cli.show_progress, like the packages' lines

# system -> (the module holding its System, `casc_jax.modes`, and MODES, the driver's modes bound to it; its
# modes). The modes are listed here so that a wrong --mode is refused before the module (and JAX) is
# imported; tests/test_launch.py checks them against module.MODES.
SYSTEMS = {
    "casc": ("casc_jax.casc.run", ("train", "eval", "sample", "transmit", "benchmark", "quality")),
    "deepjscc": ("casc_jax.casc.baselines.run", ("train", "eval", "sample", "transmit")),
    "diffsc": ("casc_jax.casc.baselines.run", ("train", "eval", "sample", "transmit")),
    "multitask": ("multitask_jax.run", ("train", "eval", "sample", "transmit")),
    # The multi-task paper's baselines (configs/mt_*.py).
    "mt_deepjscc": ("multitask_jax.baselines.run", ("train", "eval", "sample", "transmit")),
    "mt_adjscc": ("multitask_jax.baselines.run", ("train", "eval", "sample", "transmit")),
    "mt_witt": ("multitask_jax.baselines.run", ("train", "eval", "sample", "transmit")),
    "mt_deeplab_jscc": ("multitask_jax.baselines.run", ("train", "eval", "sample", "transmit")),
    "mt_fcn_digital": ("multitask_jax.baselines.digital_run", ("train", "eval", "transmit")),
}
MULTITASK_DATA = tuple(name for name in SYSTEMS if name == "multitask" or name.startswith("mt_"))  # VOC / DIV2K
NEEDS_TRAINED = ("eval", "sample", "transmit", "quality")  # read a trained model from WORKDIR
NEEDS_DATA = ("train", "eval", "sample", "quality")  # read config.data
TRANSMIT_ONLY = ("image", "snr", "fit", "task")

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
app.define_help_flags()  # --help, --helpshort, --helpfull
flags.DEFINE_bool("verbose", False, f"show tracebacks and the libraries' INFO logs (or set {cli.VERBOSE_ENV}=1)")


def _compare() -> str:
    """casc_jax.tools.compare, or multitask_jax.tools.compare when the workdirs hold multi-task evaluations."""
    multitask = any(os.path.isdir(os.path.join(w, "eval", t)) for w in _WORKDIRS.value
                    for t in ("reconstruction", "segmentation"))
    with cli.native_stderr_silenced(not flags.FLAGS.verbose):  # TensorFlow's start-up notices
        if multitask:
            from multitask_jax.tools import compare
        else:
            from casc_jax.tools import compare

    out = os.path.abspath(_OUT.value or _WORKDIR.value or os.path.join("runs", "compare"))
    workdir_lib.check_writable(out, "--out")
    compare.compare(_WORKDIRS.value, out)
    return out


def _check_mode_flags(mode: str) -> None:
    """Flags of other modes are refused rather than silently ignored."""
    for name in TRANSMIT_ONLY:
        if mode != "transmit" and flags.FLAGS[name].present:
            raise UserError(f"--{name} is used only by --mode=transmit" + (
                "; the evaluation SNRs are --config.channel.eval_snrs=..." if name == "snr" else ""))
    if flags.FLAGS["workdirs"].present:
        raise UserError("--workdirs is used only by --mode=compare")


def _validate(config, mode: str) -> dict:
    """Every check that needs no JAX: mode, flags, SNRs, workdir, data, images. Returns the run's plan."""
    if config.system not in SYSTEMS:
        raise UserError(f"config.system {config.system!r} is unknown; known systems: {', '.join(SYSTEMS)}")
    module, modes = SYSTEMS[config.system]
    if mode not in modes:
        raise UserError(f"--mode={mode} is not a mode of {config.system}; choose one of {', '.join(modes)}, "
                        "or compare")
    _check_mode_flags(mode)
    train_snrs = tuple(config.channel.get("train_snrs") or ())
    eval_snrs = config.channel.eval_snrs
    cli.parse_snrs(eval_snrs if isinstance(eval_snrs, str) else [str(s) for s in eval_snrs],
                   flag="--config.channel.eval_snrs")
    snrs = cli.parse_snrs(_SNRS.value, train_snrs)
    preset = f"_{config.preset}" if config.get("preset") else ""  # runs/casc_cr48_smoke for ...:smoke
    workdir = os.path.abspath(_WORKDIR.value or os.path.join("runs", config.name + preset))
    workdir_lib.check_not_file(workdir)
    if mode in NEEDS_TRAINED and not workdir_lib.has_checkpoints(workdir):
        what = "does not exist" if not os.path.exists(workdir) else "holds no checkpoints"
        raise UserError(f"--workdir={workdir} {what}; --mode={mode} needs a trained model there. Train first: "
                        f"python launch.py --config=... --workdir={workdir} --mode=train")
    out_dir = os.path.abspath(_OUT.value) if _OUT.value else os.path.join(workdir, "transmit")
    inside = out_dir == workdir or out_dir.startswith(workdir + os.sep)
    uses_workdir = mode != "transmit" or inside
    if uses_workdir:
        workdir_lib.check_writable(workdir)
        for sub in ("eval",) if mode in ("train", "eval") else ():
            if os.path.isdir(os.path.join(workdir, sub)):
                workdir_lib.check_writable(os.path.join(workdir, sub), f"--workdir (its {sub}/ folder)")
    if mode == "transmit":
        workdir_lib.check_writable(out_dir, "--out" if _OUT.value else "--workdir (its transmit/ folder)")
        cli.check_images(_IMAGES.value)
        if config.system == "multitask" and not _TASK.value:
            raise UserError('--mode=transmit of the multitask system needs --task="<what the receiver should do>", '
                            'e.g. --task="segment the image"')
        if config.system != "multitask":  # multitask names its outputs after the task it picks from --task
            cli.transmit_targets(_IMAGES.value, snrs or tuple(config.channel.eval_snrs), out_dir)
    if "sampler" in config and "diffusion" in config:
        cli.check_sampler(config)
    cli.check_distilled(config)  # also for systems whose diffusion section lives elsewhere (multitask's model)
    if mode in NEEDS_DATA and config.system not in MULTITASK_DATA:
        cli.check_data(config.data)
    return {"module": module, "workdir": workdir, "uses_workdir": uses_workdir, "out_dir": out_dir, "snrs": snrs}


def _outputs(mode: str, plan: dict, result) -> str:
    workdir = plan["workdir"]
    if mode in ("train", "eval"):
        return f"{os.path.join(workdir, 'eval')} (metrics, figures)" + (
            f"; checkpoints in {workdir}" if mode == "train" else "")
    if mode == "transmit":
        return plan["out_dir"]
    if isinstance(result, str):
        return result
    return workdir


def launch(argv, verbose: bool = False) -> int:
    spec = cli.config_spec(argv)
    if spec is not None:
        cli.check_overrides(cli.load_config(spec), argv)
    cli.parse_flags(flags.FLAGS, argv)
    mode = _MODE.value
    started = time.perf_counter()
    if mode == "compare":
        out = _compare()
        log.info(f"[launch] done in {time.perf_counter() - started:.0f} s; outputs in {out}")
        return 0
    config = _CONFIG.value
    if spec is None or config is None:
        raise UserError("--config is required, e.g. --config=configs/casc_cr48.py:smoke (or --mode=compare)")
    plan = _validate(config, mode)
    workdir = plan["workdir"]

    from casc_jax.train import parallel

    primary = parallel.env_process_index() in (None, 0)  # only one process of a multi-host job holds the lock
    if primary and plan["uses_workdir"]:
        workdir_lib.check_unlocked(workdir)
    if parallel.maybe_initialize_distributed():
        import jax

        log.info(f"[launch] process {jax.process_index()} of {jax.process_count()}, "
                 f"{jax.device_count()} devices in all")
    with cli.native_stderr_silenced(not verbose):  # TensorFlow's start-up notices
        runner = importlib.import_module(plan["module"])
    try:
        runner.SYSTEM.build_model(config)  # catches impossible model settings (CR, sizes) before any work
    except (ValueError, TypeError) as err:
        raise UserError(f"the config gives no valid {config.system} model: {cli.one_line(err)}") from err

    created = not os.path.exists(workdir)
    lock = None
    if plan["uses_workdir"]:
        os.makedirs(workdir, exist_ok=True)
        lock = workdir_lib.WorkdirLock(workdir, mode) if primary else None
    options = {"images": _IMAGES.value, "snrs": plan["snrs"], "fit": _FIT.value, "out_dir": plan["out_dir"],
               "task": _TASK.value}
    log.info(f"[launch] system {config.system}, mode {mode}, workdir {workdir}")
    try:
        result = runner.MODES[mode](config, workdir, options)
    except BaseException:
        if lock is not None:
            lock.release()
            lock = None
            if created and workdir_lib.remove_if_empty(workdir):
                log.info(f"[launch] removed {workdir}: this failed run had written nothing there")
        raise
    finally:
        if lock is not None:
            lock.release()
    log.info(f"[launch] done in {time.perf_counter() - started:.0f} s; outputs in {_outputs(mode, plan, result)}")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv if argv is None else argv)
    verbose = cli.verbose_requested(argv)
    cli.quiet_logs(verbose)
    cli.show_progress()
    try:
        return launch(argv, verbose)
    except BaseException as err:  # noqa: BLE001  every failure ends in one `error:` line
        return cli.report_failure(err, verbose)


if __name__ == "__main__":
    sys.exit(main())
