"""The multi-task `cpu` presets and `python -m multitask_jax.tools.reproduce`: configs, model shapes, CamVid wiring,
the job list, publishing a fake archived run, and the --data error. Generated data only, no training."""

import csv
import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from casc_jax.batching import Stream
from casc_jax.casc.run import load_config
from casc_jax.metrics import segmentation as seg_metrics
from casc_jax.tools import reproduce as casc_reproduce
from multitask_jax import channel_budget, jscc
from multitask_jax import data as mt_data
from multitask_jax import train as mt_train
from multitask_jax.baselines import models as bl_models
from multitask_jax.tools import reproduce, results

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OURS = ("multitask_recon", "multitask_seg")
BASELINES = ("mt_deepjscc", "mt_adjscc", "mt_witt", "mt_deeplab_jscc", "mt_fcn_digital")
SNRS = (0.0, 4.0, 8.0, 12.0, 16.0, 20.0)


def _config(name):
    return load_config(os.path.join(ROOT, "configs", f"{name}.py:cpu"))


def _model(config, hw=None):
    if config.system == "multitask":
        return mt_train.build_model(config, hw)
    return bl_models.build_model(config, hw)


@pytest.mark.parametrize("name", OURS + BASELINES)
def test_cpu_preset_settings(name):
    c = _config(name)
    assert c.preset == "cpu"
    assert tuple(c.model.image_size) == (128, 128)
    assert c.channel.kind == "rayleigh" and tuple(c.channel.eval_snrs) == SNRS == tuple(c.channel.train_snrs)
    assert c.train.batch_size == 16 and c.train[c.task].num_steps > 0
    kind = mt_data.parse_mt_source(c.data.source)[0]  # a placeholder the reproduction replaces
    assert kind == ("photos" if c.task == "reconstruction" else "camvid")
    assert "/work/" not in c.data.source and "shared" not in c.data.source
    if c.task == "reconstruction":
        assert tuple(tuple(s) for s in c.data.eval_sizes) == ((224, 224), (512, 768))


@pytest.mark.parametrize("name", OURS + BASELINES)
def test_cpu_preset_models_at_equal_channel_uses(name):
    """Every learned method sends C_out = 3 on the H/16 x W/16 grid: 96 / 294 / 2,304 channel uses at
    128 x 128, 224 x 224 and 768 x 512 (the 20 Kbit budget at 224 x 224: 18,816 bits)."""
    c = _config(name)
    if name == "mt_fcn_digital":
        model = _model(c)
        assert model.budget.bits == 20_000
        return
    for hw, uses in (((128, 128), 96), ((224, 224), 294), ((512, 768), 2304)):
        assert _model(c, hw).num_channel_uses == uses
    assert channel_budget.overhead_bits(294) == 18_816 <= 20_000


@pytest.mark.parametrize("name", OURS + BASELINES)
def test_cpu_preset_shapes(name):
    """Parameters and outputs of each preset at its 128 x 128 resolution (abstract evaluation: no compute)."""
    c = _config(name)
    model = _model(c)
    params = jax.eval_shape(model.init, jax.random.key(0))
    assert 1e4 < sum(x.size for x in jax.tree.leaves(params)) < 2e7
    x = jax.ShapeDtypeStruct((2, 128, 128, 3), jnp.float32)
    key, snr = jax.random.key(1), jnp.zeros((2,), jnp.float32)
    if name == "mt_fcn_digital":
        out = jax.eval_shape(model.segment, params, x)
    elif c.system == "multitask" and c.task == "reconstruction":
        out = jax.eval_shape(lambda p, x: model(p, x, c.task, key, snr, c.sampler.to_dict()), params, x)
    else:
        out = jax.eval_shape(lambda p, x: model(p, x, c.task, key, snr), params, x)
    assert out.shape == ((2, 128, 128, 3) if c.task == "reconstruction" else (2, 128, 128, 11))


def test_camvid_classes_wired():
    seg, recon = _config("multitask_seg"), _config("multitask_recon")
    assert seg.model.seg.num_classes == recon.model.seg.num_classes == mt_data.CAMVID_NUM_CLASSES == 11
    assert seg.train.segmentation.shared  # the reconstruction stage's transmitter, frozen
    assert _config("mt_deeplab_jscc").model.deeplab.num_classes == 11
    assert _config("mt_fcn_digital").model.fcn.num_classes == 11
    for name in ("multitask_seg", "mt_deeplab_jscc", "mt_fcn_digital"):
        assert _model(_config(name)).num_classes == 11


def _fake_camvid(root, n=3, h=24, w=32):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        blobs = []
        for _ in range(n):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG")
            blobs.append(buf.getvalue())
        offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
        labels = rng.integers(0, 12, (n, h, w)).astype(np.uint8)  # 11 = void
        np.savez(
            root / f"camvid_{split}.npz", jpeg=np.frombuffer(b"".join(blobs), np.uint8), offsets=offsets, labels=labels
        )
    return root


def test_camvid_void_ignored_in_loss_and_miou(tmp_path):
    c = _config("multitask_seg")
    c.data.source = f"camvid:{_fake_camvid(tmp_path / 'camvid')}"
    batch = next(mt_train.make_batches(c, "segmentation", "validation", Stream.single_pass(4), image_size=(16, 16)))
    mask = batch["mask"]
    assert set(np.unique(mask)) <= set(range(11)) | {seg_metrics.VOC_IGNORE_INDEX}
    assert (mask == seg_metrics.VOC_IGNORE_INDEX).any()  # void (11) and padding
    logits = jnp.asarray(np.random.default_rng(1).normal(size=mask.shape + (11,)), jnp.float32)
    loss = jscc.segmentation_loss(logits, jnp.asarray(mask))
    valid = mask != seg_metrics.VOC_IGNORE_INDEX
    ref = -jax.nn.log_softmax(logits)[valid, mask[valid]].mean()
    np.testing.assert_allclose(float(loss), float(ref), rtol=1e-5)
    cm = np.asarray(seg_metrics.confusion_matrix(jnp.argmax(logits, -1), jnp.asarray(mask), 11))
    assert cm.shape == (11, 11) and cm.sum() == valid.sum()
    palette = mt_data.segmentation_palette(c.data.source)
    np.testing.assert_array_equal(palette, mt_data.camvid_colormap())


# -- the reproduction command ----------------------------------------------------------------------


def test_reproduction_jobs():
    jobs = {j.name: j for j in reproduce.JOBS}
    assert set(jobs) == {"multitask_recon", "multitask_seg", "multitask_recon_awgn", "multitask_seg_awgn", *BASELINES}
    order = [j.name for j in reproduce.JOBS]
    for later in reproduce.JOBS:  # a job runs after every job whose checkpoints it reads
        for job in reproduce.JOBS:
            if job is not later and casc_reproduce.needs(later, job):
                assert order.index(job.name) < order.index(later.name), (job.name, later.name)
    assert casc_reproduce.needs(jobs["multitask_seg"], jobs["multitask_recon"])  # the shared transmitter
    assert casc_reproduce.needs(jobs["multitask_seg_awgn"], jobs["multitask_seg"])
    assert not casc_reproduce.needs(jobs["mt_witt"], jobs["multitask_recon"])
    sources = {"photos": "photos:P,eval=CUrban100,camvid=C", "camvid": "camvid:C"}
    cmd = jobs["mt_fcn_digital"].command("/runs", sources)
    assert cmd[2].endswith("configs/mt_fcn_digital.py:cpu") and "--workdir=/runs/mt_fcn_digital" in cmd
    assert "--config.data.source=camvid:C" in cmd
    assert "--config.recon_data.source=photos:P,eval=CUrban100,camvid=C" in cmd
    awgn = jobs["multitask_recon_awgn"].command("/runs", sources)
    assert "--workdir=/runs/multitask" in awgn and "--mode=eval" in awgn and "--config.channel.kind=awgn" in awgn
    assert len({j.record for j in reproduce.JOBS}) == len(reproduce.JOBS)  # several jobs share a workdir


def _fake_data(root):
    (root / "photos" / "CUrban100").mkdir(parents=True)
    _fake_camvid(root / "camvid")
    return root


def test_reproduction_data_sources(tmp_path):
    sources = reproduce.data_sources(str(_fake_data(tmp_path)))
    assert sources["camvid"] == f"camvid:{tmp_path / 'camvid'}"
    assert sources["photos"] == f"photos:{tmp_path / 'photos'},eval=CUrban100,camvid={tmp_path / 'camvid'}"
    for kind, source in sources.items():
        assert mt_data.parse_mt_source(source)[0] == kind


def test_reproduction_bad_data_is_one_line(tmp_path, capsys):
    code = reproduce.main([f"--data={tmp_path / 'nowhere'}", f"--workdir={tmp_path / 'w'}", f"--out={tmp_path / 'o'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: --data=") and "\n" not in err and "camvid" in err
    assert not (tmp_path / "o").exists()
    code = reproduce.main([f"--data={_fake_data(tmp_path / 'd')}", "--jobs=nope", f"--out={tmp_path / 'o'}"])
    assert code == 2 and "unknown job nope" in capsys.readouterr().err


def _records(method, task, sizes, **metrics):
    out = []
    for size in sizes:
        for snr in SNRS:
            r = {
                "task": task,
                "method": method,
                "size": size,
                "snr_db": snr,
                "channel": "rayleigh",
                "channel_uses": 294,
                "overhead_bits": 18816,
                "num_images": 4,
            }
            r.update({k: v + 0.1 * snr for k, v in metrics.items()})
            if task == "reconstruction":
                w, h = (int(v) for v in size.split("x"))
                r.update(height=h, width=w)
            out.append(r)
    return out


def _archive(archive, job, records, seconds=600.0):
    task = job.tasks[0]
    folder = archive / job.archive_folder
    (folder / job.eval_dir / task).mkdir(parents=True)
    (folder / job.eval_dir / task / "metrics.json").write_text(json.dumps(records))
    (folder / job.record).write_text(
        json.dumps({"job": job.name, "mode": job.mode, "seconds": seconds, "commit": "abc1234", "command": []})
    )


def test_publish_a_fake_archived_run(tmp_path):
    jobs = {j.name: j for j in reproduce.JOBS}
    archive = tmp_path / "out" / "jobs"
    sizes = ("224x224", "768x512")
    _archive(archive, jobs["multitask_recon"], _records("multitask", "reconstruction", sizes, psnr=20.0))
    _archive(archive, jobs["mt_deepjscc"], _records("deepjscc", "reconstruction", sizes, psnr=19.0))
    _archive(archive, jobs["multitask_recon_awgn"], _records("multitask_awgn", "reconstruction", sizes, psnr=22.0))
    _archive(
        archive,
        jobs["mt_deeplab_jscc"],
        _records("deeplab_jscc", "segmentation", ("128x128",), miou=0.3, pixel_accuracy=0.6),
    )
    args = type("Args", (), dict(data="DATA", workdir="runs/multitask_cpu", out="docs/results/multitask_cpu"))
    sources = {"photos": "photos:P", "camvid": "camvid:C"}
    # main --publish_only goes through the same path; here publish is called directly on the fake archive
    path = results.publish(str(archive), str(tmp_path / "out"), reproduce.JOBS, args, sources)
    with open(tmp_path / "out" / "metrics.csv") as f:
        rows = list(csv.reader(f))
    assert (
        tuple(rows[0])
        == results.CSV_COLUMNS
        == ("method", "task", "resolution", "snr_db", "psnr", "miou", "pixel_acc", "channel_uses", "num_images")
    )
    assert len(rows) == 1 + 3 * 2 * len(SNRS) + len(SNRS)
    seg = [r for r in rows[1:] if r[1] == "segmentation"]
    assert {r[0] for r in seg} == {"deeplab_jscc"} and all(r[4] == "" and r[5] and r[6] for r in seg)
    for name in ("fig4_psnr_224x224.png", "fig5_psnr_768x512.png", "fig7_miou.png"):
        assert (tmp_path / "out" / name).stat().st_size > 1000
    with open(path) as f:
        text = f.read()
    assert "python -m multitask_jax.tools.reproduce --data=DATA" in text and "abc1234" in text
    assert "| multitask_recon | multitask_recon:cpu | train | 10.0 | abc1234 |" in text
    assert "| mt_witt | mt_witt:cpu | train | not run yet |  |" in text
    assert "Fig. 4 (224x224): ours outperforms ADJSCC and WITT at every SNR | not run yet" in text
    assert "Fig. 4 (224x224): ours has the best PSNR of all methods at every SNR | holds" in text
    assert "Fig. 7: ours has the highest mIoU of all methods at every SNR (equal 20 Kbit bound) | not run yet" in text
