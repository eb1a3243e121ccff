"""launch.py as a user meets it: every bad input ends in one `error:` line, exit code 2, no traceback,
and nothing written or overwritten; the workdir lock; resuming past a corrupt checkpoint; quiet logs."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
from PIL import Image

import launch
from casc_jax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = "--config=configs/deepjscc_mse_cr48.py:smoke"
DIFFSC = "--config=configs/diffsc_cr48.py:smoke"
MULTITASK = "--config=configs/multitask_recon.py:smoke"
TINY = ["--config.train.deepjscc.num_steps=2", "--config.train.checkpoint_every=1", "--config.eval.num_images=16",
        "--config.channel.eval_snrs=(5.0,20.0)"]
NOISE = ("Traceback", "I0000", "oneDNN", "INFO:", "WARNING: All log messages")


def run_launch(*args, env=None, timeout=300):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_", "JAX_PROC"))}
    full_env.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, **(env or {}))
    full_env.pop(cli.VERBOSE_ENV, None)
    return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def snapshot(path):
    """Every file under `path` with its size and modification time (None when `path` is absent)."""
    if not os.path.exists(path):
        return None
    if os.path.isfile(path):
        return os.stat(path).st_mtime_ns
    out = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            p = os.path.join(root, name)
            st = os.stat(p)
            out[os.path.relpath(p, path)] = (st.st_size, st.st_mtime_ns if name in files else None)
    return out


def assert_one_error(proc, expected: str):
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert len(errors) == 1, proc.stderr
    assert expected in errors[0], errors[0]
    for noise in NOISE:
        assert noise not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return errors[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A DeepJSCC smoke workdir trained 2 steps (checkpoints at steps 1 and 2) and evaluated."""
    workdir = str(tmp_path_factory.mktemp("trained") / "w")
    proc = run_launch(SMOKE, *TINY, f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return workdir, proc


@pytest.fixture
def workdir_copy(trained, tmp_path):
    copy = str(tmp_path / "copy")
    shutil.copytree(trained[0], copy)
    return copy


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for i, name in enumerate(("a.png", "a.jpg")):
        Image.new("RGB", (30, 20), (40 * i, 90, 160)).save(folder / name)
    (folder / "not_an_image.png").write_text("hello")
    return str(folder)


def _lock_alive(workdir, images=None):
    with open(os.path.join(workdir, ".lock"), "w") as f:
        json.dump({"pid": os.getpid(), "host": socket.gethostname(), "mode": "train", "started": 0}, f)


def _corrupt_all(workdir):
    root = os.path.join(workdir, "deepjscc", "checkpoints")
    for step in os.listdir(root):
        _corrupt(os.path.join(root, step))


def _corrupt(step_dir):
    for base, _, files in os.walk(step_dir):
        if os.path.basename(base) == "d":  # the array data files of the OCDBT store
            for f in files:
                open(os.path.join(base, f), "w").close()


# (name, args, setup(workdir, images) or None, workdir kind: 'new' | 'trained' | 'file', env, expected text)
BAD_INPUTS = [
    ("unknown field", ["--config.train.bogus=1"], None, "new", {}, "did you mean --config.train."),
    ("unknown top field", ["--config.bogus=1"], None, "new", {}, "the config has no field 'bogus'"),
    ("misspelt section", ["--config.trian.batch_size=8"], None, "new", {}, "did you mean --config.train?"),
    ("bad preset", ["--config=configs/deepjscc_mse_cr48.py:nope"], None, "new", {}, "unknown preset 'nope'"),
    ("missing config", ["--config=configs/nope.py"], None, "new", {}, "config file 'configs/nope.py' not found"),
    ("no config", ["--config="], None, "new", {}, "not found"),
    ("bad field value", ["--config.train.batch_size=abc"], None, "new", {}, "--config.train.batch_size=abc"),
    ("unknown mode", ["--mode=bogus"], None, "new", {}, "--mode=bogus is not a mode of deepjscc"),
    ("unknown flag", ["--bogus=1"], None, "new", {}, "bogus"),
    ("bad --fit", ["--mode=transmit", "--fit=bad", "--image=IMG/a.png"], None, "trained", {}, "--fit=bad"),
    ("snr abc", ["--mode=transmit", "--snr=abc", "--image=IMG/a.png"], None, "trained", {}, "is not a number"),
    ("snr nan", ["--mode=transmit", "--snr=nan", "--image=IMG/a.png"], None, "trained", {}, "--snr=nan is not a"),
    ("snr inf", ["--mode=transmit", "--snr=5,inf", "--image=IMG/a.png"], None, "trained", {}, "--snr=inf is not a"),
    ("snr with train", ["--snr=5"], None, "new", {}, "--snr is used only by --mode=transmit"),
    ("bad eval snrs", ["--config.channel.eval_snrs=(5.0,nan)"], None, "new", {}, "eval_snrs=(5.0,nan) is not a number"),
    ("workdir is a file", [], None, "file", {}, "is a file, not a folder"),
    ("locked workdir", ["--mode=eval"], _lock_alive, "trained", {}, f"in use by process {os.getpid()}"),
    ("missing image", ["--mode=transmit", "--image=IMG/nope.png"], None, "trained", {}, "nope.png: no such file"),
    ("not an image", ["--mode=transmit", "--image=IMG/not_an_image.png"], None, "trained", {}, "not a readable image"),
    ("image twice", ["--mode=transmit", "--image=IMG/a.png", "--image=IMG/a.png"], None, "trained", {}, "given twice"),
    ("no image", ["--mode=transmit"], None, "trained", {}, "needs --image=PATH"),
    ("impossible CR", ["--config.cr=1/40"], None, "new", {}, "compression ratio 1/40"),
    ("unknown sampler", [DIFFSC, "--config.sampler.name=euler"], None, "new", {}, "Unknown sampler 'euler'"),
    ("ddpm with steps", [DIFFSC, "--config.sampler.name=ddpm", "--config.sampler.steps=10"], None, "new", {},
     "ancestral steps; got steps=10"),
    ("unknown prediction", [DIFFSC, "--config.diffusion.prediction=score"], None, "new", {},
     "unknown prediction target 'score'"),
    ("distilled, no round (multitask)", [MULTITASK, "--config.sampler.name=distilled", "--config.sampler.steps=2"],
     None, "new", {}, "needs a distillation round with a 2-step student"),
    ("distilled, no such round", [DIFFSC, "--config.sampler.name=distilled", "--config.sampler.steps=2"], None,
     "new", {}, "needs a distillation round with a 2-step student"),
    ("eval, no workdir", ["--mode=eval"], None, "new", {}, "does not exist; --mode=eval needs a trained model"),
    ("dataset offline", ["--config.data.source=tfds:cifar10"], None, "new", {"TFDS_DATA_DIR": "EMPTY"},
     "is not prepared"),
    ("all checkpoints corrupt", ["--mode=eval"], lambda w, i: _corrupt_all(w), "trained", {}, "cannot be restored"),
    ("half multi-host env", [], None, "new", {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1"}, "JAX_NUM_PROCESSES"),
]


@pytest.mark.parametrize("name,args,setup,kind,env,expected", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gives_one_error_line_and_writes_nothing(name, args, setup, kind, env, expected, tmp_path,
                                                           trained, images):
    workdir = str(tmp_path / "w")
    if kind == "trained":
        shutil.copytree(trained[0], workdir)
    elif kind == "file":
        open(workdir, "w").close()
    if setup:
        setup(workdir, images)
    (tmp_path / "empty").mkdir()
    args = [a.replace("IMG/", images + "/") for a in args]
    env = {k: v.replace("EMPTY", str(tmp_path / "empty")) for k, v in env.items()}
    config = [] if any(a.startswith("--config=") for a in args) else [SMOKE]
    before = snapshot(workdir)
    proc = run_launch(*config, *args, f"--workdir={workdir}", env=env)
    assert_one_error(proc, expected)
    assert snapshot(workdir) == before


@contextlib.contextmanager
def read_only(path):
    """`path` made unwritable, for root too (chattr +i); skips when the system cannot do it."""
    if os.geteuid() != 0:
        os.chmod(path, 0o555)
        try:
            yield
        finally:
            os.chmod(path, 0o755)
        return
    if subprocess.run(["chattr", "+i", path], capture_output=True).returncode:
        pytest.skip("cannot make a folder read-only for root here (chattr +i failed)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", path], check=True)


def test_eval_on_a_read_only_workdir_refuses_before_any_work(workdir_copy):
    before = snapshot(workdir_copy)
    with read_only(workdir_copy):
        proc = run_launch(SMOKE, *TINY, f"--workdir={workdir_copy}", "--mode=eval")
    assert_one_error(proc, "is not writable")
    assert "[eval]" not in proc.stdout and snapshot(workdir_copy) == before


def test_training_is_quiet_and_says_where_its_outputs_are(trained):
    workdir, proc = trained
    for noise in NOISE:
        assert noise not in proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1].endswith(f"outputs in {workdir}/eval (metrics, figures); "
                                                         f"checkpoints in {workdir}")
    with open(os.path.join(workdir, "eval", "metrics.json")) as f:
        saved = json.load(f)
    assert "fid" in saved["unavailable"] and all("fid_unavailable" not in r for r in saved["records"])
    with open(os.path.join(workdir, "eval", "metrics.csv")) as f:
        assert "unavailable" not in f.read()
    assert not os.path.exists(os.path.join(workdir, ".lock"))


def test_corrupt_latest_checkpoint_resumes_from_the_newest_intact_one(workdir_copy, images):
    ckpts = os.path.join(workdir_copy, "deepjscc", "checkpoints")
    assert sorted(os.listdir(ckpts)) == ["1", "2"]
    _corrupt(os.path.join(ckpts, "2"))
    corrupt_files = snapshot(os.path.join(ckpts, "2"))
    out = os.path.join(workdir_copy, "out")
    proc = run_launch(SMOKE, *TINY, f"--workdir={workdir_copy}", "--mode=transmit", f"--image={images}/a.png",
                      f"--out={out}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "step 2" in proc.stdout and "resuming from step 1" in proc.stdout
    assert os.listdir(ckpts) == ["1"]  # set aside, not deleted: the same files, moved
    assert snapshot(os.path.join(workdir_copy, "deepjscc", "checkpoints_corrupt", "2")) == corrupt_files
    assert len(os.listdir(out)) == 2


def test_transmit_gives_same_stems_distinct_names_and_takes_over_a_stale_lock(workdir_copy, images):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(os.path.join(workdir_copy, ".lock"), "w") as f:
        json.dump({"pid": dead.pid, "host": socket.gethostname(), "mode": "train"}, f)
    proc = run_launch(SMOKE, *TINY, f"--workdir={workdir_copy}", "--mode=transmit", f"--image={images}/a.png",
                      f"--image={images}/a.jpg", "--snr=10,40")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"taking over a stale lock of process {dead.pid}" in proc.stdout
    assert "40 dB is far outside" in proc.stdout  # trained at 5 to 20 dB
    out = os.path.join(workdir_copy, "transmit")
    assert sorted(os.listdir(out)) == ["a_jpg_snr10.png", "a_jpg_snr40.png", "a_png_snr10.png", "a_png_snr40.png"]
    assert proc.stdout.strip().splitlines()[-1].endswith(f"outputs in {out}")
    assert not os.path.exists(os.path.join(workdir_copy, ".lock"))
    again = run_launch(SMOKE, f"--workdir={workdir_copy}", "--mode=transmit", f"--image={images}/a.jpg",
                       f"--image={images}/a.png", "--snr=10")
    assert_one_error(again, "would overwrite")


def test_failed_training_leaves_no_new_workdir(tmp_path):
    """A failure after the workdir was created (here: a batch that does not split over the devices)."""
    workdir = str(tmp_path / "w")
    proc = run_launch(SMOKE, "--config.train.batch_size=3", f"--workdir={workdir}",
                      env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert_one_error(proc, "not divisible")
    assert not os.path.exists(workdir)


def test_cli_helpers(progress):
    assert cli.parse_snrs(["5", "-3.5"], (5.0, 20.0)) == (5.0, -3.5)
    assert not progress.lines
    cli.parse_snrs(["31"], (5.0, 20.0))
    assert len(progress.lines) == 1 and "31 dB" in progress.lines[0]
    targets = cli.transmit_targets(["x/a.png", "y/a.png", "a.jpg", "b.png"], [5.0], "/out")
    assert [os.path.basename(t) for t in targets[0]] == ["a_png_snr5.png", "a_png_2_snr5.png", "a_jpg_snr5.png",
                                                           "b_snr5.png"]


def test_registry_lists_each_systems_modes():
    from casc_jax.modes import System, modes_of

    for module, modes in launch.SYSTEMS.values():
        runner = importlib.import_module(module)
        assert isinstance(runner.SYSTEM, System) and callable(runner.SYSTEM.build_model)
        assert tuple(runner.MODES) == modes == tuple(modes_of(runner.SYSTEM))


def test_driver_modes_over_a_system():
    """The driver's modes call the System's parts in order; a system's own mode is added or replaces the
    driver's, and None removes one."""
    import ml_collections

    from casc_jax.modes import System, modes_of

    calls = []
    system = System(
        build_model=lambda c: calls.append("build") or "model",
        train=lambda c, w: calls.append(("train", w)) or {"w": 1.0},
        load=lambda c, w: (calls.append(("load", w)) or {"w": 2.0}, "trained checkpoint (step 7)"),
        evaluate=lambda c, w, p: calls.append(("evaluate", p["w"])) or [{"psnr": p["w"]}],
        modes={"sample": None, "own": lambda s, c, w, o: (s.load(c, w)[1], o["x"])},
    )
    modes = modes_of(system)
    assert tuple(modes) == ("train", "eval", "transmit", "own")
    config = ml_collections.ConfigDict({"train": {}})
    assert modes["train"](config, "wd", {}) == [{"psnr": 1.0}]
    assert modes["eval"](config, "wd", {}) == [{"psnr": 2.0}]
    assert calls == [("train", "wd"), ("evaluate", 1.0), ("load", "wd"), ("evaluate", 2.0)]
    config.train.evaluate = False  # train only
    calls.clear()
    assert modes["train"](config, "wd", {}) == {} and calls == [("train", "wd")]
    assert modes["own"](config, "wd", {"x": 3}) == ("trained checkpoint (step 7)", 3)
