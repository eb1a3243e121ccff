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
                             grid_images=2, echo=lambda s: None)
    # Calls at the first SNR: real 1, fake 1, real 2, fake 2; after it only the reconstructions.
    assert len(seen_batches) == 2 + 2 * len(snrs)
    real_images = [seen_batches[0], seen_batches[2]]
    real = np.concatenate([np.asarray(fake_inception(x)) for x in real_images])
    for snr, record in zip(snrs, records, strict=True):
        fake = np.concatenate([np.asarray(fake_inception(reconstruct(x, None, snr))) for x in real_images])
        np.testing.assert_allclose(record["fid"], fid_lib.fid_from_activations(real, fake), rtol=1e-6)
