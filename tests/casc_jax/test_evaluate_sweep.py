"""The evaluation sweep: the real images' Inception statistics are computed once for all SNRs."""

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
