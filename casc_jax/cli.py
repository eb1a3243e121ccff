"""The launcher's user-facing machinery: one-line errors, quiet logs, and checks of flags, config and inputs.

Everything here runs before JAX starts (no JAX import), so a mistake costs a second, not a compile.
Every user error ends the run with exactly one line on stderr, `error: <what is wrong and how to fix it>`,
and exit code 2; `--verbose` or CASC_VERBOSE=1 shows the traceback too, and the libraries' INFO logs.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import logging
import math
import os
import re
import sys
import traceback

log = logging.getLogger(__name__)

VERBOSE_ENV = "CASC_VERBOSE"
EXIT_USER_ERROR = 2
SNR_MARGIN_DB = 10.0  # an SNR this far outside the trained range gets a warning
PROGRESS_LOGGERS = ("casc_jax", "multitask_jax")


class UserError(ValueError):
    """A mistake the user can fix (a bad value); its message says what is wrong and how to fix it."""


# -- logs and errors --------------------------------------------------------------------------------
def verbose_requested(argv) -> bool:
    return "--verbose" in argv or os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def quiet_logs(verbose: bool) -> None:
    """Keep the libraries (TensorFlow, absl, orbax, clu, JAX) at WARNING, unless verbose.

    Call before TensorFlow or JAX is imported: TensorFlow reads its C++ log level once.
    """
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # also hides the oneDNN notice (INFO)
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    os.environ.setdefault("GLOG_minloglevel", "2")
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    absl_logging.set_stderrthreshold(absl_logging.WARNING)
    for name in ("absl", "jax", "orbax", "clu", "tensorflow", "tensorflow_datasets"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    sys.unraisablehook = _without_closed_loop_noise(sys.unraisablehook)


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time of each record (so redirection and capture work)."""

    def __init__(self):
        super().__init__(sys.stdout)
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _):
        pass


def show_progress() -> None:
    """Print the progress lines of casc_jax and multitask_jax (their INFO logs, `logging.getLogger(__name__)`
    in each module) as plain lines on stdout. The launcher and the scripts call it; a library user who
    does not gets nothing printed, or routes the "casc_jax" and "multitask_jax" loggers as they like."""
    for name in PROGRESS_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if not isinstance(h, _StdoutHandler)] + [_StdoutHandler()]
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _without_closed_loop_noise(hook):
    """An unraisable-exception hook that drops "Event loop is closed": when orbax fails to read a checkpoint,
    TensorStore reads still in flight finish after orbax's event loop closed, and each prints that."""

    def filtered(unraisable):
        if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
            return
        hook(unraisable)

    return filtered


@contextlib.contextmanager
def native_stderr_silenced(silence: bool = True):
    """Send file descriptor 2 to /dev/null for the block: TensorFlow's C++ start-up notices (oneDNN,
    CPU features) are written there before any log level applies. Python exceptions still propagate."""
    if not silence:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def user_error_types() -> tuple[type, ...]:
    """The exceptions that describe a user's mistake or an expected failure (their message is the help)."""
    types = [UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, ValueError]
    for module, name in (
        ("casc_jax.data", "DatasetUnavailableError"),
        ("casc_jax.train.checkpoint", "CheckpointError"),
        ("casc_jax.train.loop", "TrainingDiverged"),
    ):
        if module in sys.modules:  # only modules that were loaded can have raised it
            types.append(getattr(sys.modules[module], name))
    return tuple(types)


def one_line(message: str) -> str:
    return " ".join(str(message).split())


def report_failure(err: BaseException, verbose: bool) -> int:
    """Print `error: ...` (after the traceback when verbose, or when `err` is a bug); return the exit code."""
    if isinstance(err, KeyboardInterrupt):
        print("error: interrupted", file=sys.stderr)
        return 130
    if isinstance(err, SystemExit):
        return err.code if isinstance(err.code, int) else EXIT_USER_ERROR
    expected = isinstance(err, user_error_types())
    if verbose or not expected:
        traceback.print_exception(err, file=sys.stderr)
    message = one_line(err) or type(err).__name__
    if not expected:
        message = f"unexpected {type(err).__name__}: {message} (a bug; please report it with the traceback above)"
    print(f"error: {message}", file=sys.stderr, flush=True)
    return EXIT_USER_ERROR if expected else 1


# -- config file and --config.FIELD overrides --------------------------------------------------------
def config_spec(argv) -> str | None:
    """The value of --config in argv (None when absent)."""
    for i, arg in enumerate(argv):
        if arg.startswith(("--config=", "-config=")):
            return arg.split("=", 1)[1]
        if arg in ("--config", "-config") and i + 1 < len(argv):
            return argv[i + 1]
    return None


def load_config(spec: str):
    """'configs/casc_cr48.py[:preset]' -> that file's get_config(preset); UserError for a bad file or preset."""
    path, _, preset = spec.partition(":")
    if not path or not os.path.isfile(path):
        here = os.path.dirname(path) or "."
        known = sorted(f for f in os.listdir(here) if f.endswith(".py")) if os.path.isdir(here) else []
        near = difflib.get_close_matches(os.path.basename(path), known, n=3)
        hint = f"; did you mean {', '.join(os.path.join(here, n) for n in near)}?" if near else ""
        raise UserError(f"config file {path!r} not found{hint} (the configs are in configs/, e.g. "
                        "--config=configs/casc_cr48.py:smoke)")
    module_spec = importlib.util.spec_from_file_location("_launch_config", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:
        raise UserError(f"config file {path} cannot be loaded: {type(err).__name__}: {one_line(err)}") from err
    if not hasattr(module, "get_config"):
        raise UserError(f"config file {path} has no get_config(preset) function")
    try:
        return module.get_config(preset) if preset else module.get_config()
    except (ValueError, TypeError, KeyError) as err:
        raise UserError(f"--config={spec}: {one_line(err)}") from err


def field_paths(config, prefix: str = "") -> list[str]:
    """Every dotted field path of a ConfigDict, sections included ('train', 'train.batch_size', ...)."""
    out = []
    for key in sorted(config.keys()):
        path = prefix + key
        out.append(path)
        value = config[key]
        if hasattr(value, "keys") and hasattr(value, "to_dict"):
            out += field_paths(value, path + ".")
    return out


def override_paths(argv) -> list[str]:
    """The FIELD of every --config.FIELD[=VALUE] in argv."""
    paths = []
    for arg in argv:
        m = re.match(r"^--?(?:no)?config\.([^=]+)", arg)
        if m:
            paths.append(m.group(1))
    return paths


def check_overrides(config, argv) -> None:
    """UserError naming the nearest valid fields for an unknown --config.FIELD."""
    valid = field_paths(config)
    for path in override_paths(argv):
        if path in valid:
            continue
        section, _, name = path.rpartition(".")
        if section and section not in valid:
            bad, pool = section, [p for p in valid if p.count(".") == section.count(".")]
        else:
            bad, pool = path, [p for p in valid if p.startswith(section + ".")] if section else list(config.keys())
        near = difflib.get_close_matches(bad, pool, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join('--config.' + n for n in near)}?" if near else (
            f"the fields there are {', '.join(sorted(pool)[:12])}")
        what = "section" if bad == section else "field"
        raise UserError(f"--config.{path}: the config has no {what} {bad!r}; {hint}")


def parse_flags(flag_values, argv) -> list[str]:
    """absl flag parsing with its errors as UserError; returns the positional arguments."""
    from absl import flags

    try:
        rest = flag_values(argv)
    except flags.Error as err:
        raise UserError(_flag_message(err)) from err
    except (AttributeError, KeyError, TypeError, ValueError) as err:  # raised by config_flags overrides
        raise UserError(f"a --config override cannot be applied: {one_line(err)}") from err
    if len(rest) > 1:
        raise UserError(f"unexpected argument {rest[1]!r}; flags take the form --name=value")
    return rest


def _flag_message(err) -> str:
    text = str(err).strip()
    m = re.search(r"of field config\.(\S+) is not supported for overriding", text)
    if m:
        return (f"--config.{m.group(1)} cannot be set on the command line: its default is None, so ml_collections "
                "does not know its type; set it in the config file instead")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    last = next((ln for ln in reversed(lines) if re.match(r"^\w+(Error|Exception):", ln)), None)
    if last and "Error whilst parsing config file" in text:
        return f"--config: {last.split(':', 1)[1].strip()}"
    return one_line(lines[0] if lines else text)


# -- SNRs -----------------------------------------------------------------------------------------------
def parse_snrs(values, train_snrs=(), flag: str = "--snr") -> tuple[float, ...]:
    """SNR strings in dB -> floats; UserError for non-numbers, NaN and inf; a warning far outside train_snrs."""
    example = f"{flag}='(5.0, 10.0)'" if flag.startswith("--config.") else f"{flag}=5,10,20"
    if isinstance(values, str):
        raise UserError(f"{flag}={values} is not a list of numbers; give SNRs in dB, e.g. {example}")
    snrs = []
    for v in values:
        try:
            snr = float(v)
        except (TypeError, ValueError):
            raise UserError(f"{flag}={v} is not a number; give SNRs in dB, e.g. {example}") from None
        if not math.isfinite(snr):
            raise UserError(f"{flag}={v} is not a finite number of dB; give SNRs in dB, e.g. {example}")
        snrs.append(snr)
    trained = [float(s) for s in train_snrs or ()]
    if trained:
        lo, hi = min(trained), max(trained)
        far = [s for s in snrs if s < lo - SNR_MARGIN_DB or s > hi + SNR_MARGIN_DB]
        if far:
            log.warning(f"[launch] warning: {flag} {', '.join(f'{s:g}' for s in far)} dB is far outside the SNRs "
                        f"the model was trained at ({lo:g} to {hi:g} dB, config.channel.train_snrs); "
                        "expect extrapolation")
    return tuple(snrs)


# -- data and images ----------------------------------------------------------------------------------
def check_sampler(config) -> None:
    """The config's `sampler` section names a sampler that can run on its diffusion schedule, and the
    denoiser's prediction target (`diffusion.prediction`) is one the samplers can read."""
    from casc_jax import diffusion

    diffusion.check_sampler(diffusion.SamplerSpec.of(config.sampler.to_dict()), config.diffusion.num_timesteps)
    diffusion.check_prediction(config.diffusion.get("prediction", "eps"))
    check_distilled(config)


def check_distilled(config) -> None:
    """Sampler 'distilled' needs a system with a distillation stage (`train.distill`) and one of its rounds
    trained for `sampler.steps` (`casc_jax.train.distill.sampled_round`)."""
    if config.get("sampler", {}).get("name") != "distilled":
        return
    if "distill" not in config.get("train", {}):
        raise UserError(
            f"sampler 'distilled' runs a distilled student, and system '{config.system}' has no distillation stage "
            "(no train.distill section); choose another --config.sampler.name"
        )
    with native_stderr_silenced():  # the training toolkit imports TensorFlow (clu), which prints start-up notices
        from casc_jax.train.distill import sampled_round

    try:
        sampled_round(config)
    except ValueError as err:
        raise UserError(one_line(str(err))) from err


def check_data(data_cfg) -> None:
    """The configured dataset is usable here (TFDS prepared or downloadable, folder present): checked
    without TensorFlow or JAX. The errors are casc_jax.data's own, which name the offline options."""
    from casc_jax import data as data_lib
    from casc_jax import image_io

    kind, arg = data_lib.parse_source(data_lib.cfg_get(data_cfg, "source"))
    if kind == "folder":
        image_io.list_image_files(arg)
    elif kind == "tfds" and not data_lib.cfg_get(data_cfg, "download", False):
        from absl import logging as absl_logging

        level = absl_logging.get_verbosity()
        absl_logging.set_verbosity(absl_logging.ERROR)  # TFDS warns about half-written folders it skips
        try:
            data_lib.tfds_builder(arg.split("[")[0], data_lib.cfg_get(data_cfg, "data_dir"), download=False)
        finally:
            absl_logging.set_verbosity(level)


def check_images(paths) -> list[str]:
    """Each --image exists, is a file, is given once and opens as an image (header only)."""
    from PIL import Image, UnidentifiedImageError

    if not paths:
        raise UserError("--mode=transmit needs --image=PATH (repeat the flag for several images)")
    seen = {}
    for path in paths:
        if not os.path.exists(path):
            raise UserError(f"--image={path}: no such file")
        if not os.path.isfile(path):
            raise UserError(f"--image={path} is a folder, not an image file")
        real = os.path.realpath(path)
        if real in seen:
            raise UserError(f"--image={path} is given twice (also as --image={seen[real]}); give each image once")
        seen[real] = path
        try:
            with Image.open(path) as img:
                img.verify()
        except (OSError, UnidentifiedImageError, SyntaxError) as err:
            raise UserError(f"--image={path} is not a readable image ({one_line(err)})") from None
    return list(paths)


def transmit_targets(paths, snrs, out_dir: str, tag: str = "") -> list[list[str]]:
    """The output file of every (SNR, image): out_dir/<name><tag>_snr<S>.png, never overwriting.

    <name> is the image's stem; stems given more than once get the extension (a_png, a_jpg) and, when
    that still collides, a counter. UserError when a target already exists (an earlier run's output).
    """
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    names, used = [], set()
    for path, stem in zip(paths, stems):
        name = stem
        if stems.count(stem) > 1:
            ext = os.path.splitext(path)[1].lstrip(".").lower()
            name = f"{stem}_{ext}" if ext else stem
        base, i = name, 1
        while name in used:
            i += 1
            name = f"{base}_{i}"
        used.add(name)
        names.append(name)
    targets = [[os.path.join(out_dir, f"{n}{tag}_snr{s:g}.png") for n in names] for s in snrs]
    existing = [t for row in targets for t in row if os.path.exists(t)]
    if existing:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise UserError(f"transmit would overwrite {existing[0]}{more} from an earlier run; pass --out=NEW_FOLDER "
                        "or move those files away")
    return targets
