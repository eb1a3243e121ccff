"""The evaluation sweep: the real images' Inception statistics are computed once for all SNRs."""

import jax
import jax.numpy as jnp
import numpy as np

from casc_jax import data as data_lib
from casc_jax import evaluate
from casc_jax.metrics import fid as fid_lib
from casc_jax.metrics import inception as inception_lib
from casc_jax.train import parallel


def test_real_inception_statistics_are_computed_once(tmp_path, monkeypatch):
    seen_batches = []

    def fake_inception(x):  # (B, H, W, 3) -> (B, 4): a few pixel statistics stand in for pool3 features
        seen_batches.append(np.asarray(x).copy())
        return jnp.stack([x.mean((1, 2, 3)), x.std((1, 2, 3)), x[..., 0].mean((1, 2)), x[..., 1].max((1, 2))], 1)

    monkeypatch.setattr(inception_lib, "load_inception", lambda path=None: fake_inception)
    monkeypatch.setattr(evaluate, "load_lpips", lambda net: (_ for _ in ()).throw(FileNotFoundError("no LPIPS")))
    cfg = data_lib.default_config()
    cfg.update(source="embedded")
    snrs = (5.0, 10.0, 20.0)

    def reconstruct(x, key, snr):
        return jnp.clip(x + 0.5 / snr, -1, 1)

    records = evaluate.sweep(method="m", cr="1/48", reconstruct=reconstruct, data_cfg=cfg, split="test", snrs=snrs,
                             batch_size=8, num_images=16, mesh=parallel.make_mesh(), workdir=str(tmp_path),
                             grid_images=2)
    # Calls at the first SNR: real 1, fake 1, real 2, fake 2; after it only the reconstructions.
    assert len(seen_batches) == 2 + 2 * len(snrs)
    real_images = [seen_batches[0], seen_batches[2]]
    real = np.concatenate([np.asarray(fake_inception(x)) for x in real_images])
    for snr, record in zip(snrs, records, strict=True):
        fake = np.concatenate([np.asarray(fake_inception(reconstruct(x, None, snr))) for x in real_images])
        np.testing.assert_allclose(record["fid"], fid_lib.fid_from_activations(real, fake), rtol=1e-6)


def test_metric_totals_are_masked_means_reduced_on_device():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (6, 4, 4, 3)).astype(np.float32)
    x_hat = np.clip(x + rng.normal(0, 0.1, x.shape), -1, 1).astype(np.float32)
    x_hat[1] = x[1]  # identical: infinite PSNR, capped
    valid = np.array([1, 1, 0, 1, 0, 1], bool)
    totals = evaluate.MetricTotals({"psnr": evaluate.capped_psnr, "l1": lambda a, b: jnp.abs(a - b).mean((1, 2, 3))})
    totals.add(jnp.asarray(x[:3]), jnp.asarray(x_hat[:3]), jnp.asarray(valid[:3]))
    totals.add(jnp.asarray(x[3:]), jnp.asarray(x_hat[3:]), jnp.asarray(valid[3:]))
    mse = ((x.astype(np.float64) - x_hat) ** 2).mean((1, 2, 3))
    with np.errstate(divide="ignore"):
        psnr64 = np.minimum(10 * np.log10(4.0 / mse), evaluate.PSNR_CAP_DB)
    means = totals.means()
    np.testing.assert_allclose(means["psnr"], psnr64[valid].mean(), rtol=1e-6)
    l1 = np.abs(x.astype(np.float64) - x_hat).mean((1, 2, 3))
    np.testing.assert_allclose(means["l1"], l1[valid].mean(), rtol=1e-6)


def test_sweep_scores_only_the_first_num_images(tmp_path, monkeypatch):
    """11 images from batches of 8: the second batch counts 3 of its rows; the record is their mean."""
    no_fid = lambda path=None: (_ for _ in ()).throw(FileNotFoundError("no FID"))  # noqa: E731
    monkeypatch.setattr(inception_lib, "load_inception", no_fid)
    monkeypatch.setattr(evaluate, "load_lpips", lambda net: lambda x, y: jnp.abs(x - y).mean((1, 2, 3)))
    cfg = data_lib.default_config()
    cfg.update(source="embedded")

    def reconstruct(x, key, snr):
        return jnp.clip(x * 0.9 + 0.01 * jnp.arange(x.shape[0])[:, None, None, None], -1, 1)

    (record,) = evaluate.sweep(method="m", cr="1/48", reconstruct=reconstruct, data_cfg=cfg, split="test",
                               snrs=(10.0,), batch_size=8, num_images=11, mesh=parallel.make_mesh(),
                               workdir=str(tmp_path), grid_images=2)
    batches = data_lib.make_dataset(cfg, "test", data_lib.Stream(8, process_index=0, process_count=1))
    x = np.concatenate([b["image"] for _, b in zip(range(2), batches, strict=False)])[:11].astype(np.float64)
    x_hat = np.concatenate([np.asarray(reconstruct(jnp.asarray(x[i:i + 8], jnp.float32), None, 10.0))
                            for i in (0, 8)])[:11]
    mse = ((x - x_hat) ** 2).mean((1, 2, 3))
    assert record["num_images"] == 11
    np.testing.assert_allclose(record["psnr"], np.mean(10 * np.log10(4.0 / mse)), rtol=1e-5)
    np.testing.assert_allclose(record["lpips"], np.abs(x - x_hat).mean((1, 2, 3)).mean(), rtol=1e-5)


def _array_batches(images, masks, batch_size):
    """A padded pass over (images, masks) in order, as the data pipelines give it."""
    def batches():
        n = len(images)
        for i in range(0, n, batch_size):
            pad = batch_size - len(images[i:i + batch_size])
            valid = np.r_[np.ones(batch_size - pad, bool), np.zeros(pad, bool)]
            yield {"image": np.concatenate([images[i:i + batch_size], np.zeros((pad, *images.shape[1:]), np.float32)]),
                   "mask": np.concatenate([masks[i:i + batch_size], np.zeros((pad, *masks.shape[1:]), np.int32)]),
                   "valid": valid}
    return batches


def test_confusion_scores_match_the_host_confusion_matrix_and_survive_the_int32_flush(monkeypatch):
    """The device-summed confusion matrix equals numpy's over the valid images; an int32 overflow guard
    small enough to fire on every batch (moving the sum into int64 on the host) changes nothing."""
    rng = np.random.default_rng(0)
    k, masks = 5, rng.integers(0, 5, (10, 6, 6)).astype(np.int32)
    masks[0, 0, :3] = 255  # VOC's ignore label
    preds = rng.integers(0, 5, (10, 6, 6)).astype(np.int32)
    valid = np.array([1, 1, 0, 1, 1, 0, 1, 1, 1, 0], bool)
    expected = np.zeros((k, k), np.int64)
    for p, m in zip(preds[valid], masks[valid]):
        keep = m != 255
        np.add.at(expected, (m[keep], p[keep]), 1)
    for limit in (np.iinfo(np.int32).max, 40):
        monkeypatch.setattr(evaluate, "_INT32_MAX", limit)
        scores = evaluate.ConfusionScores(k)
        for i in (0, 5):
            scores.add({"mask": jnp.asarray(masks[i:i + 5])}, jnp.asarray(preds[i:i + 5]), jnp.asarray(valid[i:i + 5]))
        np.testing.assert_array_equal(scores.total(), expected)
        result = scores.result()
        np.testing.assert_allclose(result["pixel_accuracy"], np.trace(expected) / expected.sum(), rtol=1e-6)
        iou = np.diag(expected) / (expected.sum(0) + expected.sum(1) - np.diag(expected))
        np.testing.assert_allclose(result["per_class_iou"], iou, rtol=1e-6)
        np.testing.assert_allclose(result["miou"], iou.mean(), rtol=1e-6)
    assert evaluate.ConfusionScores(k).result()["miou"] is None  # nothing counted: no score


def test_lost_images_count_as_misses_of_their_classes_and_never_as_an_iou_of_their_own():
    """lost_as_wrong: a valid undelivered image adds its labelled pixels to the misses of their classes
    (numpy's confusion matrix with an extra 'lost' prediction); the plain reading leaves it out."""
    rng = np.random.default_rng(2)
    k, masks, preds = 4, rng.integers(0, 4, (6, 5, 5)).astype(np.int32), rng.integers(0, 4, (6, 5, 5)).astype(np.int32)
    masks[1, 0] = 255
    valid, delivered = np.array([1, 1, 1, 1, 1, 0], bool), np.array([1, 0, 1, 0, 1, 0], bool)
    counted = np.zeros((k, k + 1), np.int64)  # ground truth x (prediction, or k where lost)
    for p, m, d in zip(preds[valid], masks[valid], delivered[valid]):
        keep = m != 255
        np.add.at(counted, (m[keep], np.where(d, p, k)[keep]), 1)
    tp = np.diag(counted[:, :k])
    iou = tp / (counted.sum(1) + counted[:, :k].sum(0) - tp)
    fair, plain = evaluate.ConfusionScores(k, lost_as_wrong=True), evaluate.ConfusionScores(k, suffix="_delivered")
    for scores in (fair, plain):
        scores.add({"mask": jnp.asarray(masks), "valid": jnp.asarray(valid)}, jnp.asarray(preds),
                   jnp.asarray(valid & delivered))
    result = fair.result()
    np.testing.assert_allclose(result["per_class_iou"], iou, rtol=1e-6)
    np.testing.assert_allclose(result["miou"], iou.mean(), rtol=1e-6)
    np.testing.assert_allclose(result["pixel_accuracy"], tp.sum() / counted.sum(), rtol=1e-6)
    shown = counted[:, :k].copy()
    shown[:] = 0
    for p, m in zip(preds[valid & delivered], masks[valid & delivered]):
        keep = m != 255
        np.add.at(shown, (m[keep], p[keep]), 1)
    assert set(plain.result()) == {"miou_delivered", "pixel_accuracy_delivered", "mean_class_accuracy_delivered",
                                   "per_class_iou_delivered"}
    np.testing.assert_allclose(plain.result()["pixel_accuracy_delivered"], np.trace(shown) / shown.sum(), rtol=1e-6)
    nothing = evaluate.ConfusionScores(k, lost_as_wrong=True)
    nothing.add({"mask": jnp.asarray(masks), "valid": jnp.asarray(valid)}, jnp.asarray(preds),
                jnp.zeros(6, bool))
    assert nothing.result()["miou"] == nothing.result()["pixel_accuracy"] == 0.0  # a link that delivers nothing


def test_snr_sweep_counts_delivered_images_keys_batches_and_shows_visual_only_snrs():
    """Every rule of the one loop on 10 images in batches of 4 (2 padding rows): num_images, the padded
    rows, a receiver's failed deliveries (masked from the scores), the same key for batch i at every SNR,
    and a grid SNR outside the sweep that runs for its visual rows only."""
    rng = np.random.default_rng(1)
    images = rng.uniform(-1, 1, (10, 4, 4, 3)).astype(np.float32)
    masks = np.zeros((10, 4, 4), np.int32)
    seen_keys = {}

    def receive(arrays, key, snr):
        seen_keys.setdefault(snr, []).append(np.asarray(jax.random.key_data(key)))
        x_hat = np.asarray(arrays["image"]) * 0.5
        failed = np.array([False, True, False, False])
        return evaluate.Delivered(x_hat, ok=~failed if snr < 0 else np.ones(4, bool), unsent=failed & (snr < 0))

    results = evaluate.snr_sweep(
        snrs=(-3.0, 10.0), visual_snrs=(10.0, 18.0), batches=_array_batches(images, masks, 4),
        receive=receive, evaluators=lambda: [evaluate.ImageScores({"psnr": evaluate.capped_psnr})],
        mesh=parallel.make_mesh(), num_images=9, show=5)
    bad, good, visual = results
    assert [r.snr_db for r in results] == [-3.0, 10.0, 18.0]
    assert (bad.num_images, bad.delivered, good.num_images, good.delivered) == (9, 7, 9, 9)
    assert (bad.unsent, good.unsent) == (2, 0)  # images 1 and 5; image 9 is past num_images
    psnr = 10 * np.log10(4.0 / ((images.astype(np.float64) * 0.5) ** 2).mean((1, 2, 3)))
    np.testing.assert_allclose(good.scores["psnr"], psnr[:9].mean(), rtol=1e-5)
    delivered = np.array([1, 0, 1, 1] * 3, bool)[:9]  # row 1 of every batch failed
    np.testing.assert_allclose(bad.scores["psnr"], psnr[:9][delivered].mean(), rtol=1e-5)
    assert visual.scores is None and len(visual.shown["output"]) == 5 and len(seen_keys[18.0]) == 2
    np.testing.assert_array_equal(bad.shown["delivered"], [1, 0, 1, 1, 1])
    np.testing.assert_allclose(good.shown["image"], images[:5])
    for a, b in zip(seen_keys[-3.0], seen_keys[10.0], strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(seen_keys[10.0][0], seen_keys[10.0][1])
