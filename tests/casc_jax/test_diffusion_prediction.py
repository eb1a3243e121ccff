"""The denoiser's prediction targets (eps, x0, v) against float64 closed forms, and CASC / DiffSC built with them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from casc_jax import diffusion
from casc_jax.casc.baselines.diffsc import build_diffsc
from casc_jax.casc.system import build_casc
from configs import casc_base, diffsc_cr48

SCHEDULE = diffusion.make_schedule("ldm_linear", 1000, 0.0015, 0.0195)


def _draw(t):
    k0, k1 = jax.random.split(jax.random.key(3))
    x0 = jax.random.normal(k0, (len(t), 4, 4, 3))
    noise = jax.random.normal(k1, x0.shape)
    return x0, noise


def _alpha_sigma64(t):
    """float64 alpha_t, sigma_t at integer t from the betas (independent of the schedule's own tables)."""
    betas = np.asarray(diffusion.make_betas("ldm_linear", 1000, 0.0015, 0.0195), np.float64)
    abar = np.cumprod(1.0 - betas)[np.asarray(t)]
    return np.sqrt(abar)[:, None, None, None], np.sqrt(1.0 - abar)[:, None, None, None]


@pytest.mark.parametrize("kind", diffusion.PREDICTIONS)
def test_target_read_back_as_noise_at_every_noise_level(kind):
    t = jnp.array([0, 1, 250, 500, 999])
    x0, noise = _draw(t)
    x_t = diffusion.q_sample(SCHEDULE, x0, t, noise)
    target = diffusion.prediction_target(SCHEDULE, x0, noise, t, kind)
    eps = diffusion.eps_from_prediction(SCHEDULE, x_t, t, target, kind)
    # x0 at t = 0 divides by sigma_0 = sqrt(0.0015): float32 rounding of x_t is amplified 26x there.
    np.testing.assert_allclose(eps, noise, atol=2e-4 if kind == "x0" else 2e-5)


def test_v_target_is_salimans_and_ho_velocity():
    t = jnp.array([0, 10, 400, 999])
    x0, noise = _draw(t)
    alpha, sigma = _alpha_sigma64(t)
    expected = alpha * np.asarray(noise, np.float64) - sigma * np.asarray(x0, np.float64)
    got = diffusion.prediction_target(SCHEDULE, x0, noise, t, "v")
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.array_equal(diffusion.prediction_target(SCHEDULE, x0, noise, t, "x0"), x0)
    assert np.array_equal(diffusion.prediction_target(SCHEDULE, x0, noise, t, "eps"), noise)


@pytest.mark.parametrize("kind", ("eps", "v"))
def test_x0_read_at_t_T_amplifies_an_eps_error_not_a_v_error(kind):
    """What a one-step sampler or distilled student reads at t = T, (x_t - sigma eps_hat) / alpha, after an
    output error of 0.01: sigma_T / alpha_T = 84 times that for an eps network, at most that for a v network."""
    t = jnp.array([999, 999])
    x0, noise = _draw(t)
    x_t = diffusion.q_sample(SCHEDULE, x0, t, noise)
    target = diffusion.prediction_target(SCHEDULE, x0, noise, t, kind)
    a64, s64 = (float(c.ravel()[0]) for c in _alpha_sigma64(t))
    read = lambda pred: (x_t - s64 * diffusion.eps_from_prediction(SCHEDULE, x_t, t, pred, kind)) / a64  # noqa: E731
    np.testing.assert_allclose(read(target), x0, atol=1e-3)
    err = float(jnp.sqrt(jnp.mean(jnp.square(read(target + 0.01) - read(target)))))
    expected = 0.01 * (s64 / a64 if kind == "eps" else s64)
    assert s64 / a64 == pytest.approx(83.8, abs=0.1)
    assert err == pytest.approx(expected, rel=2e-2)


def test_real_valued_timesteps_interpolate_like_the_samplers():
    """On the continuous-time grid the conversion uses the samplers' alpha(t), sigma(t)."""
    t = jnp.array([10.5, 700.25])
    x0, noise = _draw(t)
    alpha, sigma = diffusion.alpha_sigma(SCHEDULE, t)
    x_t = alpha[:, None, None, None] * x0 + sigma[:, None, None, None] * noise
    v = alpha[:, None, None, None] * noise - sigma[:, None, None, None] * x0
    np.testing.assert_allclose(diffusion.eps_from_prediction(SCHEDULE, x_t, t, v, "v"), noise, atol=2e-5)


def test_unknown_target_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown prediction target 'score'; choose one of eps, x0, v"):
        diffusion.check_prediction("score")


@pytest.mark.parametrize("kind", ["x0", "v"])
def test_casc_reads_its_unet_output_as_the_configured_target(kind):
    config = casc_base.base_config(preset="smoke")
    config.diffusion.update(num_timesteps=8, prediction=kind)
    model = build_casc(config)
    assert model.prediction == kind
    params = model.init(jax.random.key(0))
    params["unet"] = jax.tree.map(lambda p: p + 0.05 * jnp.ones_like(p), params["unet"])  # a non-zero output
    c_hat = jax.random.normal(jax.random.key(1), (2,) + model.condition_shape)
    z_t = jax.random.normal(jax.random.key(2), (2,) + model.latent_shape)
    t = jnp.array([1, 6])
    dynamic = model.dynamic_weights(params, c_hat)
    raw = model.predict(params, z_t, t, c_hat, dynamic)
    expected = diffusion.eps_from_prediction(model.schedule, z_t, t, raw, kind)
    np.testing.assert_allclose(model.eps(params, z_t, t, c_hat, dynamic), expected, rtol=1e-6, atol=1e-6)
    x = jax.random.uniform(jax.random.key(4), (2,) + model.image_shape, minval=-1, maxval=1)
    loss = model.denoiser_loss(params, x, jax.random.key(5), jnp.array([5.0, 20.0]))
    assert np.isfinite(float(loss)) and float(loss) > 0


@pytest.mark.parametrize("build, config", [(build_casc, casc_base.base_config), (build_diffsc, diffsc_cr48.get_config)])
def test_an_unknown_target_stops_the_build(build, config):
    c = config(preset="smoke") if build is build_casc else config("smoke")
    c.diffusion.prediction = "score"
    with pytest.raises(ValueError, match="unknown prediction target"):
        build(c)


def test_diffsc_trains_on_the_x0_target():
    c = diffsc_cr48.get_config("smoke")
    c.diffusion.prediction = "x0"
    model = build_diffsc(c)
    params = model.init(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(4), (2,) + model.image_shape, minval=-1, maxval=1)
    # A zero-output U-Net (its last conv starts at zero) predicts x0 = 0: the loss is then E||x||^2.
    params["unet"] = jax.tree.map(jnp.zeros_like, params["unet"])
    loss = model.denoiser_loss(params, x, jax.random.key(5), 20.0)
    np.testing.assert_allclose(float(loss), float(jnp.mean(x**2)), rtol=1e-5)
