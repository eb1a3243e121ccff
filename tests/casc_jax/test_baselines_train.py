"""Baselines' training, launcher modes and the comparison: resume, LPIPS/EMA steps, metrics, compare figures."""

import csv
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from casc_jax import channel as ch
from casc_jax import data as data_lib
from casc_jax import image_io
from casc_jax.casc.baselines import run as baselines_run
from casc_jax.casc.baselines import train as tb
from casc_jax.casc.system import build_casc
from casc_jax.evaluate import read_metrics, save_reconstructions
from casc_jax.metrics.lpips import load_lpips
from casc_jax.tools import compare
from casc_jax.train import loop
from configs import casc_base, deepjscc_base

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))



def _tiny(system="deepjscc", loss="mse", steps=4, every=2, unet_steps=2):
    if system == "deepjscc":
        c = deepjscc_base.deepjscc_config(loss, preset="smoke")
    else:
        c = deepjscc_base.diffsc_config(preset="smoke")
        c.diffsc.unet.update(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), head_dim=8)
        c.diffusion.num_timesteps = 4
        c.train.diffsc.update(num_steps=unet_steps, warmup_steps=0)
    c.deepjscc.filters = (4, 8, 8, 8)
    c.train.update(batch_size=4, log_every=2, checkpoint_every=every)
    c.train.deepjscc.update(num_steps=steps)
    c.eval.update(batch_size=4, num_images=4, grid_images=4)
    c.channel.eval_snrs = (5.0, 20.0)
    return c


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _crash_at(monkeypatch, n):
    """Make the n-th training batch fetch raise, as if the job were killed."""
    real = data_lib.make_dataset
    calls = {"n": 0}

    def crashing(*args, **kwargs):
        for batch in real(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt("simulated kill")
            yield batch

    monkeypatch.setattr(data_lib, "make_dataset", crashing)


@pytest.fixture(scope="module")
def deepjscc_workdir(tmp_path_factory):
    """A DeepJSCC-MSE trained 2 steps and evaluated: (config, workdir, records)."""
    config = _tiny(steps=2)
    workdir = str(tmp_path_factory.mktemp("deepjscc"))
    records = baselines_run.MODES["train"](config, workdir, {})
    return config, workdir, records


# ---------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("cr", ["1/48", "1/96"])
def test_configs_share_casc_cr_and_snrs(cr):
    casc = casc_base.base_config(cr=cr)
    for preset in ("", "smoke"):
        for c in (deepjscc_base.deepjscc_config("mse", cr, preset), deepjscc_base.diffsc_config(cr, preset)):
            assert tb.build_model(c).num_channel_uses == build_casc(casc).num_channel_uses
            assert tuple(c.channel.train_snrs) == tuple(casc.channel.train_snrs) == (5.0, 10.0, 15.0, 20.0)
            assert c.data.source == ("embedded" if preset else casc.data.source)
    paper = deepjscc_base.diffsc_config(cr)
    assert paper.diffusion.num_timesteps == 1000 and paper.train.deepjscc.loss == "mse"
    assert deepjscc_base.deepjscc_config("lpips", cr).name == f"deepjscc_lpips_cr{cr[2:]}"
    with pytest.raises(ValueError, match="unknown preset"):
        deepjscc_base.deepjscc_config("mse", cr, "huge")


def test_lr_schedule_warmup_and_decay_closed_form():
    c = _tiny().train.deepjscc
    c.update(base_lr=1e-3, warmup_steps=4, lr_decay_at=0.5, lr_decay_factor=0.1)
    lr = tb.lr_schedule(c, 16, total_steps=20)
    got = [float(lr(jnp.int32(i))) for i in (0, 1, 3, 9, 10, 19)]
    np.testing.assert_allclose(got, [2.5e-4, 5e-4, 1e-3, 1e-3, 1e-4, 1e-4], rtol=1e-6)


# --------------------------------------------------------------------------------------- DeepJSCC


def test_deepjscc_resumes_after_crash_and_eval_modes_read_it(tmp_path, monkeypatch, progress):
    config = _tiny(steps=4, every=2)
    workdir = str(tmp_path)
    with monkeypatch.context() as crash, pytest.raises(KeyboardInterrupt):  # undoes only the crash, not `progress`
        _crash_at(crash, 4)  # die while fetching step 4's batch
        tb.train_baseline(config, workdir)
    ckpt = loop.stage_checkpointer(workdir, "deepjscc", config.train)
    assert ckpt.latest_step == 2
    ckpt.close()
    records = baselines_run.MODES["train"](config, workdir, {})
    assert "[deepjscc] training steps 2 -> 4" in progress.lines
    again = tb.train_baseline(config, workdir)
    assert "[deepjscc] already trained: checkpoint at step 4 of 4" in progress.lines
    params, source = tb.load_trained_params(config, workdir)
    assert "deepjscc step 4" in source
    for a, b in zip(_leaves(params), _leaves(again)):
        np.testing.assert_array_equal(a, b)
    # eval reproduces the train-mode sweep; sample and transmit read the same checkpoint.
    evaluated = baselines_run.MODES["eval"](config, workdir, {})
    assert [r["psnr"] for r in evaluated] == pytest.approx([r["psnr"] for r in records])
    assert os.path.getsize(baselines_run.MODES["sample"](config, workdir, {})) > 0
    from PIL import Image

    src = tmp_path / "mine.png"
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (20, 30, 3), np.uint8)).save(src)
    written = baselines_run.MODES["transmit"](config, workdir, {"images": [str(src)], "snrs": (10.0,)})
    assert len(written) == 1 and Image.open(written[0]).size == (30, 20)


def test_deepjscc_smoke_train_eval_writes_metrics(deepjscc_workdir):
    config, workdir, records = deepjscc_workdir
    saved, unavailable = read_metrics(os.path.join(workdir, "eval", "metrics.json"))
    assert saved == records and "fid" in unavailable
    assert [(r["method"], r["cr"], r["snr_db"], r["num_images"]) for r in saved] == [
        ("deepjscc_mse_cr48", "1/48", 5.0, 4),
        ("deepjscc_mse_cr48", "1/48", 20.0, 4),
    ]
    assert all(np.isfinite(r["psnr"]) and r["lpips"] is not None and r["sampler"] is None for r in saved)
    # The saved reconstructions start from the first test images, bit-exact.
    with np.load(os.path.join(workdir, "eval", "reconstructions.npz")) as f:
        source, recon = f["source"], f["snr20"]
    np.testing.assert_array_equal(source, image_io.load_embedded(32)[0][:4])  # uint8 test images
    assert recon.shape == source.shape and recon.dtype == np.uint8


@pytest.mark.parametrize("kind", ["lpips", "mse_lpips"])
def test_deepjscc_lpips_step_is_the_lpips_of_the_reconstruction(kind):
    """One jitted step's loss equals LPIPS(X_hat, X) ('lpips') or MSE + lambda LPIPS ('mse_lpips'), computed
    by hand with the pretrained weights."""
    config = _tiny(loss="lpips")
    config.train.deepjscc.update(loss=kind, lpips_weight=0.25)
    model = tb.build_model(config)
    s = config.train.deepjscc
    states = tb.initial_states(model, config, jax.random.key(0), {"deepjscc": 4})
    tx = tb.optimizer(s, 4, 4)
    _, lpips_vars = tb.lpips_parts(s)
    step = jax.jit(tb.make_deepjscc_step(model, s, (5.0, 20.0), tx, seed=3))
    x = image_io.to_float(image_io.load_embedded(32)[0][:4])
    state = states["deepjscc"]
    new, metrics = step(state, {"image": x}, lpips_vars)
    k_snr, k_loss = jax.random.split(jax.random.fold_in(jax.random.key(3), 0))
    snr = ch.sample_snr(k_snr, 4, (5.0, 20.0))
    x_hat = model(state.params, x, k_loss, snr)
    expected = float(np.mean(np.asarray(load_lpips(s.lpips_net)(x_hat, x), np.float64)))
    if kind == "mse_lpips":
        mse = float(np.mean(np.square((np.asarray(x_hat, np.float64) - np.asarray(x, np.float64)) / 2)))
        expected = mse + 0.25 * expected
    np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-4)
    assert bool(metrics["finite"]) and int(new.step) == 1
    # Adam's first update is lr * g / (|g| + eps): every parameter moves by at most lr.
    moved = [np.max(np.abs(a - b)) for a, b in zip(_leaves(new.params), _leaves(state.params))]
    assert max(moved) <= s.base_lr * (1 + 1e-5) and max(moved) > 0.5 * s.base_lr


# ----------------------------------------------------------------------------------------- DiffSC


def test_diffsc_step_trains_only_the_unet_with_ema():
    config = _tiny("diffsc")
    model = tb.build_model(config)
    states = tb.initial_states(model, config, jax.random.key(0))
    tx = tb.optimizer(config.train.diffsc, 4, 2)
    step = jax.jit(tb.make_diffsc_step(model, config.train.diffsc, (5.0, 20.0), tx, seed=0))
    x = image_io.to_float(image_io.load_embedded(32)[0][:4])
    jscc = states["deepjscc"].params
    state = states["diffsc"]
    new, metrics = step(state, {"image": x}, jscc)
    assert bool(metrics["finite"]) and np.isfinite(float(metrics["loss"]))
    d = min(config.train.diffsc.ema_decay, 2 / 11)  # the first update of LDM's warmed-up EMA
    for e, p0, p1 in zip(_leaves(new.ema_params), _leaves(state.params), _leaves(new.params)):
        np.testing.assert_allclose(e, d * p0.astype(np.float64) + (1 - d) * p1, rtol=1e-5, atol=1e-7)
    assert jax.tree.structure(new.params) == jax.tree.structure(model.init(jax.random.key(1))["unet"])


def test_diffsc_resumes_in_its_unet_stage(tmp_path, monkeypatch, progress):
    config = _tiny("diffsc", steps=2, every=2, unet_steps=4)
    workdir = str(tmp_path)
    with monkeypatch.context() as crash, pytest.raises(KeyboardInterrupt):  # undoes only the crash, not `progress`
        _crash_at(crash, 2 + 4)  # 2 DeepJSCC batches, then die fetching the U-Net's step 4 batch
        tb.train_baseline(config, workdir)
    params = tb.train_baseline(config, workdir)
    assert "[deepjscc] already trained: checkpoint at step 2 of 2" in progress.lines
    assert "[diffsc] training steps 2 -> 4" in progress.lines
    target = tb.initial_states(tb.build_model(config), config, jax.random.key(0))["deepjscc"]
    jscc_step, jscc_state = loop.restore_stage(workdir, "deepjscc", config.train, target)
    assert jscc_step == 2
    for a, b in zip(_leaves(params["deepjscc"]), _leaves(jscc_state.params)):  # frozen through stage 'diffsc'
        np.testing.assert_array_equal(a, b)
    loaded, source = tb.load_trained_params(config, workdir)
    assert "diffsc step 4" in source and "EMA" in source
    for a, b in zip(_leaves(loaded["unet"]), _leaves(params["unet"])):
        np.testing.assert_array_equal(a, b)


def test_diffsc_builds_on_another_workdirs_deepjscc(deepjscc_workdir, tmp_path, progress):
    source_config, source_dir, _ = deepjscc_workdir
    config = _tiny("diffsc", unet_steps=1)
    config.diffsc.deepjscc_workdir = source_dir
    params = tb.train_baseline(config, str(tmp_path))
    assert f"[deepjscc] using the DeepJSCC of {source_dir} (step 2)" in progress.lines
    assert not os.path.exists(tmp_path / "deepjscc")
    trained, _ = tb.load_trained_params(source_config, source_dir)
    for a, b in zip(_leaves(params["deepjscc"]), _leaves(trained)):
        np.testing.assert_array_equal(a, b)
    config.diffsc.deepjscc_workdir = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="holds no trained DeepJSCC"):
        tb.train_baseline(config, str(tmp_path / "other"))


def test_diffsc_receiver_for_benchmark():
    config = _tiny("diffsc")
    fn, params, y_shape = baselines_run.diffsc_receiver_for_benchmark(config, batch_size=2)
    assert y_shape == (2, 8, 8, 2)
    y = jax.random.normal(jax.random.key(0), y_shape)
    x_hat = jax.jit(fn)(params, y, jax.random.key(1))
    assert x_hat.shape == (2, 32, 32, 3) and float(jnp.max(jnp.abs(x_hat))) <= 1.0
    jaxpr = jax.make_jaxpr(fn)(params, y, jax.random.key(1))
    assert [e.params["length"] for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"] == [4]
    # The parts: a 3-step chain, and one U-Net call reading X_jscc = the DeepJSCC decoder output.
    parts = baselines_run.diffsc_parts_for_benchmark(config, timesteps=3)
    jaxpr = jax.make_jaxpr(parts["receive"])(params, y, jax.random.key(1))
    assert [e.params["length"] for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"] == [3]
    x_jscc = parts["condition"](params, y)
    model = tb.build_model(config)
    np.testing.assert_array_equal(x_jscc, model.deepjscc.receive(params["deepjscc"], y))
    t = jnp.array([3, 0], jnp.int32)
    leaves, tree = jax.tree.flatten(params["unet"])  # perturbed: the zero-initialised output conv hides inputs
    rng = np.random.RandomState(0)
    unet = jax.tree.unflatten(tree, [p + 0.05 * rng.standard_normal(p.shape).astype(np.float32) for p in leaves])
    eps = parts["one_eps"](dict(params, unet=unet), x_jscc, x_hat, t)
    np.testing.assert_allclose(eps, model.unet.apply({"params": unet}, x_hat, t, x_jscc), rtol=1e-5, atol=1e-6)
    assert float(jnp.std(eps)) > 1e-3
    with pytest.raises(ValueError, match="system 'diffsc'"):
        baselines_run.diffsc_receiver_for_benchmark(_tiny())


def test_modes_without_training_explain_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="Train first"):
        baselines_run.MODES["eval"](_tiny("diffsc"), str(tmp_path), {})
    with pytest.raises(ValueError, match="--image"):
        baselines_run.MODES["transmit"](_tiny(), str(tmp_path), {})
    wrong = _tiny()
    wrong.system = "casc"
    with pytest.raises(ValueError, match="not a baseline"):
        tb.build_model(wrong)


# ---------------------------------------------------------------------------------------- compare
METHODS = ("deepjscc_mse_cr48", "deepjscc_lpips_cr48", "diffsc_cr48", "casc_cr48", "casc_cr48_nocan")
SNRS = (5.0, 10.0, 15.0, 20.0)


def _fabricate(root, methods=METHODS, source_seed=0, n=3):
    """Workdirs with made-up eval/metrics.json (psnr = 20 + i + snr/10) and reconstructions.npz."""
    rng = np.random.RandomState(source_seed)
    source = rng.uniform(-1, 1, (n, 8, 8, 3))
    workdirs = {}
    for i, method in enumerate(methods):
        workdir = os.path.join(root, method)
        os.makedirs(os.path.join(workdir, "eval"))
        records = [
            dict(method=method, cr="1/48", snr_db=s, psnr=20.0 + i + s / 10, lpips=0.5 - 0.05 * i, fid=None,
                 fid_unavailable="no weights", sampler=None, steps=None, num_images=10)
            for s in SNRS
        ]
        with open(os.path.join(workdir, "eval", "metrics.json"), "w") as f:
            json.dump(records, f)
        recon = np.clip(source + 0.1 * (i + 1), -1, 1)
        path = os.path.join(workdir, "eval", "reconstructions.npz")
        save_reconstructions({20.0: np.concatenate([source, recon])}, path)
        workdirs[method] = workdir
    return workdirs, source


def test_compare_writes_figures_and_tables_from_metrics(tmp_path):
    workdirs, source = _fabricate(str(tmp_path))
    out = str(tmp_path / "out")
    written = compare.compare(list(workdirs.values()), out)
    names = sorted(os.path.basename(p) for p in written)
    assert names == sorted(
        ["comparison_cr48.png", "comparison_cr48.csv", "comparison_cr48.md", "ablation_cr48.png",
         "visual_cr48_snr20.png"]
    )
    for p in written:
        assert os.path.getsize(p) > 0
    with open(os.path.join(out, "comparison_cr48.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows[::4]] == [  # the paper's order
        "deepjscc_mse_cr48", "deepjscc_lpips_cr48", "diffsc_cr48", "casc_cr48_nocan", "casc_cr48"]
    for r in rows:
        i = METHODS.index(r["method"])
        assert float(r["psnr"]) == pytest.approx(20.0 + i + float(r["snr_db"]) / 10)
    assert rows[0]["label"] == "DeepJSCC (MSE)"
    with open(os.path.join(out, "comparison_cr48.md")) as f:
        md = f.read()
    # The best PSNR and LPIPS at every SNR are casc_cr48_nocan's (i = 4): 24.5 + snr/10 dB and 0.3.
    assert "| CASC w/o CAN | **24.50** | **25.00** | **25.50** | **26.00** |" in md
    assert "| CASC | 23.50 | 24.00 | 24.50 | 25.00 |" in md
    assert "| CASC w/o CAN | **0.3000** |" in md and "FID n/a: no weights" in md
    from PIL import Image

    assert Image.open(os.path.join(out, "visual_cr48_snr20.png")).size[0] > 400


def test_compare_visual_rows_are_the_same_images_in_paper_order(tmp_path):
    workdirs, source = _fabricate(str(tmp_path), n=2)
    methods = [(m, w) for m, w in workdirs.items() if m != "casc_cr48_nocan"]
    rows = compare.visual_rows(methods[::-1], 20.0)
    assert [name for name, _ in rows] == ["Source", "CASC", "DiffSC", "DeepJSCC (LPIPS)", "DeepJSCC (MSE)"]
    np.testing.assert_array_equal(rows[0][1], image_io.to_uint8(source))
    np.testing.assert_array_equal(rows[4][1], image_io.to_uint8(np.clip(source + 0.1, -1, 1)))
    other, _ = _fabricate(str(tmp_path / "other"), methods=("casc_cr48",), source_seed=1, n=2)
    with pytest.raises(ValueError, match="different test images"):
        compare.visual_rows(methods[:1] + [("casc_cr48", other["casc_cr48"])], 20.0)


def test_compare_bad_inputs(tmp_path, progress):
    workdirs, _ = _fabricate(str(tmp_path), methods=("casc_cr48",))
    with pytest.raises(FileNotFoundError, match="--mode=eval"):
        compare.compare([str(tmp_path / "missing")], str(tmp_path / "out"))
    twin, _ = _fabricate(str(tmp_path / "twin"), methods=("casc_cr48",))
    with pytest.raises(ValueError, match="reported by both"):
        compare.compare([workdirs["casc_cr48"], twin["casc_cr48"]], str(tmp_path / "out"))
    with pytest.raises(ValueError, match="at least one workdir"):
        compare.compare([], str(tmp_path / "out"))

    written = compare.compare([workdirs["casc_cr48"]], str(tmp_path / "out"))
    assert not any("ablation" in p for p in written) and any("no ablation figure" in s for s in progress.lines)
    assert compare.family("casc_cr48_nocan") == "casc_nocan" and compare.cr_tag("1/96") == "cr96"


def test_launch_compare_mode(tmp_path):
    workdirs, _ = _fabricate(str(tmp_path), methods=("casc_cr48", "casc_cr48_nocan"))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "launch.py", "--mode=compare", f"--workdirs={','.join(workdirs.values())}", f"--out={out}"],
        cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(os.listdir(out)) == sorted(
        ["comparison_cr48.png", "comparison_cr48.csv", "comparison_cr48.md", "ablation_cr48.png",
         "visual_cr48_snr20.png"]
    )
