"""The denoiser profile: an oracle denoiser reads x0 exactly at every t, a blind one loses it as t grows,
and both real decoders (DiffSC, CASC) are read through their own conditioning."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from casc_jax import diffusion
from casc_jax.cli import load_config
from casc_jax.tools import denoiser_profile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCHEDULE = diffusion.make_schedule("linear", 1000, 1e-4, 0.02)


def _fake_views(eps):
    def views(config, params):
        return lambda x, key, snr: (x, x, jnp.zeros_like(x)), eps, lambda x0: x0, "zeros", SCHEDULE
    return views


def _oracle(x_t, t, x0):  # the true noise of x_t, from the clean images passed as the condition
    alpha, sigma = diffusion.alpha_sigma(SCHEDULE, t)
    return (x_t - alpha[:, None, None, None] * x0) / sigma[:, None, None, None]


def test_an_oracle_reads_x0_at_every_t_and_a_blind_denoiser_does_not(monkeypatch):
    images = np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32)
    monkeypatch.setattr(denoiser_profile, "views", _fake_views(_oracle))
    report = denoiser_profile.profile(None, None, images, 20.0)
    assert [r["t"] for r in report["rows"]] == list(denoiser_profile.TIMESTEPS)
    assert min(r["psnr"] for r in report["rows"]) > 60.0
    zeros_psnr = np.mean(10 * np.log10(4 / (images.astype(np.float64) ** 2).mean((1, 2, 3))))
    np.testing.assert_allclose(report["reference_psnr"], zeros_psnr, rtol=1e-4)  # the all-zeros reference
    monkeypatch.setattr(denoiser_profile, "views", _fake_views(lambda x_t, t, c: jnp.zeros_like(x_t)))
    blind = [r["psnr"] for r in denoiser_profile.profile(None, None, images, 20.0)["rows"]]
    assert blind[0] > 40.0 and blind[-1] < 8.0 and all(b <= a + 1e-3 for a, b in zip(blind, blind[1:]))


@pytest.mark.parametrize("name", ["diffsc_cr48", "casc_cr48"])
def test_profiles_the_smoke_decoders_through_their_conditioning(name):
    config = load_config(os.path.join(ROOT, "configs", f"{name}.py:smoke"))
    if name == "diffsc_cr48":
        from casc_jax.casc.baselines import build_diffsc
        params = build_diffsc(config).init(jax.random.key(0))
    else:
        from casc_jax.casc.system import build_casc
        params = build_casc(config).init(jax.random.key(0))
    images = np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    report = denoiser_profile.profile(config, params, images, 10.0, timesteps=(0, 500))
    assert report["num_images"] == 2 and len(report["rows"]) == 2
    assert all(np.isfinite(r["psnr"]) for r in report["rows"]) and np.isfinite(report["reference_psnr"])


def test_a_system_without_a_diffusion_decoder_is_refused():
    config = load_config(os.path.join(ROOT, "configs", "deepjscc_mse_cr48.py:smoke"))
    with pytest.raises(ValueError, match="no diffusion decoder"):
        denoiser_profile.views(config, None)
