"""The multi-task paper's baselines: the budget (channel uses equal to ours), shapes, a few training steps of
the shared train step, the digital FCN path's failure reports, and the comparison's files."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import multitask_base
from configs.mt_baselines_base import BASELINES, base_config
from multitask_jax import train as mt_train
from multitask_jax.baselines import digital_eval, models
from multitask_jax.baselines import run as bl_run
from multitask_jax.evaluate import GRIDS_FILE
from multitask_jax.tools import compare

JSCC = ("deepjscc", "adjscc", "witt", "deeplab_jscc")
quiet = lambda s: None  # noqa: E731


def _tiny(baseline, size=32, steps=3):
    c = base_config(baseline, "smoke")
    c.model.image_size = (size, size)
    c.channel.update(train_snrs=(0.0, 20.0), eval_snrs=(0.0, 20.0))
    c.train.update(batch_size=4, log_every=2, checkpoint_every=2)
    c.train[c.task].num_steps = steps
    c.eval.update(batch_size=4, num_images=4, grid_images=3, grid_snrs=(0.0, 20.0))
    if c.task == "reconstruction":
        c.data.eval_sizes = ((size, size), (size, size + 16))
    return c


def test_paper_budget_equals_ours_at_both_validation_sizes():
    ours = multitask_base.base_config("reconstruction")
    for baseline in JSCC:
        c = base_config(baseline)
        for hw in ((224, 224), (512, 768)):
            model = models.build_model(c, hw)
            assert model.num_channel_uses == mt_train.build_model(ours, hw).num_channel_uses
        assert models.build_model(c).num_channel_uses == 294 and models.build_model(c).overhead_bits() == 18_816
    digital = models.build_model(base_config("fcn_digital"))
    assert [digital.budget_fields(m)["overhead_bits"] <= 20_000 for m in ("16qam", "64qam")] == [True, True]
    assert digital.budget_fields("16qam")["channel_uses"] == 5000


@pytest.mark.parametrize("baseline", JSCC)
def test_shapes_budget_and_a_few_steps_lower_the_loss(baseline):
    c = _tiny(baseline)
    model = models.build_model(c)
    ours = multitask_base.base_config(c.task, "smoke")
    ours.model.image_size = (32, 32)
    assert model.num_channel_uses == mt_train.build_model(ours).num_channel_uses == 2 * 2 * 4 // 2
    params = jax.jit(model.init)(jax.random.key(0))
    x = jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (4, 32, 32, 3)), jnp.float32)
    z = model.transmit(params, x, jnp.zeros((4,)))
    assert z.shape == (4, 2, 2, 4)
    np.testing.assert_allclose(jnp.sum(jnp.square(z), axis=(1, 2, 3)) / model.num_channel_uses, 1.0, rtol=1e-5)
    out = model(params, x, c.task, jax.random.key(1), 10.0)
    assert out.shape == ((4, 32, 32, 3) if c.task == "reconstruction" else (4, 32, 32, 21))

    batch = {"image": x, "mask": np.random.RandomState(1).randint(0, 21, (4, 32, 32)).astype(np.int32)}
    stage = c.train[c.task]
    stage.base_lr = 3e-3
    tx = mt_train.optimizer(stage, 4)
    state = mt_train.new_state(params, stage, tx)
    keys = ("image",) if c.task == "reconstruction" else ("image", "mask")
    step = jax.jit(mt_train.make_loss_step(model.loss, stage, (0.0, 20.0), tx, seed=0, keys=keys))
    losses = []
    for _ in range(8):
        state, metrics = step(state, batch, None)
        losses.append(float(metrics["loss"]))
    assert all(np.isfinite(losses)) and np.mean(losses[-3:]) < np.mean(losses[:3]), losses


def test_digital_fcn_reports_failures_and_never_invents_images(tmp_path):
    c = _tiny("fcn_digital")
    c.digital.update(modulations=("16qam",), budget_bits=8000)
    c.channel.eval_snrs = (-5.0, 20.0)
    c.eval.grid_snrs = (18.0,)  # outside the sweep: a visual row, no record
    c.recon_data.eval_sizes = ((32, 32),)
    model = models.build_model(c)
    params = jax.jit(model.init)(jax.random.key(0))
    records = digital_eval.evaluate(c, params, str(tmp_path))
    by = {(r["task"], r["snr_db"]): r for r in records}
    assert sorted(by) == [("reconstruction", -5.0), ("reconstruction", 20.0), ("segmentation", -5.0),
                          ("segmentation", 20.0)]
    for task in ("segmentation", "reconstruction"):
        bad, good = by[(task, -5.0)], by[(task, 20.0)]
        assert bad["failures"] == bad["num_images"] == 4 and bad["delivered"] == 0 and bad["failure_rate"] == 1.0
        assert good["failures"] == 0 and good["delivered"] == 4
        assert bad["unsent"] == good["unsent"] == 0 and bad["decoding_failures"] == 4  # the JPEGs fit 8 Kbit
        if task == "segmentation":  # a lost image is a miss; the delivered-only scores leave it out
            assert bad["miou"] == bad["pixel_accuracy"] == 0.0 and bad["miou_delivered"] is None
            assert good["miou"] == good["miou_delivered"] and good["pixel_accuracy"] == good["pixel_accuracy_delivered"]
        else:
            assert bad["psnr"] is None and good["psnr"] is not None
        assert good["channel_uses"] == 2000 and good["overhead_bits"] <= 8000
    assert 20.0 < by[("reconstruction", 20.0)]["psnr"] < 100.0
    with np.load(os.path.join(tmp_path, "eval", "reconstruction", GRIDS_FILE)) as g:
        assert not g["jpeg_ldpc_16qam_32x32_snr-5_ok"].any()
        assert (g["jpeg_ldpc_16qam_32x32_snr-5"] == 0).all()  # nothing shown for a failed image
        shown = c.eval.grid_images  # the grids keep the first eval.grid_images images
        assert g["jpeg_ldpc_16qam_32x32_snr18_ok"].all()
        assert g["jpeg_ldpc_16qam_32x32_snr18"].shape == (shown, 32, 32, 3)
    with np.load(os.path.join(tmp_path, "eval", "segmentation", GRIDS_FILE)) as g:
        assert (g["fcn_digital_16qam_snr-5"] == 255).all()  # failed: void, not a prediction
        assert g["fcn_digital_16qam_snr18"].shape == (shown, 32, 32) and (g["fcn_digital_16qam_snr18"] != 255).any()
    with open(os.path.join(tmp_path, "eval", "segmentation", "metrics.json")) as f:
        assert json.load(f)[0]["miou"] == 0.0


def test_train_eval_through_the_shared_loop_and_the_comparison(tmp_path):
    workdir = str(tmp_path / "deepjscc")
    c = _tiny("deepjscc", steps=2)
    records = bl_run.MODES["train"](c, workdir, {})
    assert [r["size"] for r in records] == ["32x32", "32x32", "48x32", "48x32"]
    assert [r["channel_uses"] for r in records] == [8, 8, 12, 12] and records[0]["method"] == "deepjscc"
    assert os.path.isdir(os.path.join(workdir, "reconstruction", "checkpoints"))
    params, source = bl_run.load_params(c, workdir)
    assert "step 2" in source and set(params) == {"encoder", "decoder"}

    seg = tmp_path / "seg" / "eval" / "segmentation"  # a finished segmentation evaluation, written by hand
    seg.mkdir(parents=True)
    rows = [dict(task="segmentation", method=m, size="32x32", snr_db=s, miou=v or 0.0, pixel_accuracy=v or 0.0,
                 channel_uses=8, overhead_bits=512, num_images=4, delivered=4 if v else 0, failures=0 if v else 4)
            | ({"miou_delivered": v} if "qam" in m else {})
            for m in ("multitask", "fcn_digital_16qam") for s, v in ((0.0, None if "qam" in m else 0.3), (20.0, 0.5))]
    seg.joinpath("metrics.json").write_text(json.dumps(rows))
    masks = np.zeros((3, 32, 32), np.int32)
    np.savez(seg / GRIDS_FILE, image=np.zeros((3, 32, 32, 3), np.uint8), ground_truth=masks,
             multitask_snr20=masks, **{"fcn_digital_16qam_snr20": masks})
    out = str(tmp_path / "compare")
    written = compare.compare([workdir, str(tmp_path / "seg")], out)
    names = {os.path.basename(p) for p in written}
    assert {"fig4_psnr_32x32.png", "fig5_psnr_48x32.png", "fig7_miou.png", "reconstruction.csv", "reconstruction.md",
            "segmentation.csv", "segmentation.md", "visual_32x32_snr20.png", "visual_segmentation_snr20.png"} <= names
    with open(os.path.join(out, "segmentation.md")) as f:
        md = f.read()
    assert "JPEG+LDPC+16QAM+FCN" in md and "4 of 4 images not delivered" in md
    delivered_only = md.split("## mIoU over the delivered images only")[1].split("Budget")[0]  # digital rows only
    assert "| JPEG+LDPC+16QAM+FCN | n/a | 0.5000 |" in delivered_only
    assert compare.label("multitask") not in delivered_only
    assert all(os.path.getsize(p) > 0 for p in written)
    assert set(BASELINES) == {"deepjscc", "adjscc", "witt", "deeplab_jscc", "fcn_digital"}


def test_grids_of_other_images_are_left_out_of_the_visual_rows():
    first = {"image": np.zeros((2, 4, 4, 3), np.uint8), "ground_truth": np.zeros((2, 4, 4), np.int32),
             "multitask_snr10": np.ones((2, 4, 4), np.int32)}
    merged = {}
    compare.merge_grids(merged, first, "a")
    compare.merge_grids(merged, dict(first, deeplab_jscc_snr10=np.full((2, 4, 4), 2)), "b")  # the same images
    other = dict(first, image=np.full((2, 4, 4, 3), 9, np.uint8), mt_witt_snr10=np.zeros((2, 4, 4)))
    compare.merge_grids(merged, other, "c")  # other sources: its rows would sit under the wrong images
    assert set(merged) == {"image", "ground_truth", "multitask_snr10", "deeplab_jscc_snr10"}
    np.testing.assert_array_equal(merged["image"], first["image"])
