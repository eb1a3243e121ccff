"""DPM-Solver++(3M), the continuous-time schedule and the Gaussian-toy accuracy of the default fast sampler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from casc_jax.diffusion import (
    FAST_SAMPLER,
    SamplerSpec,
    alpha_sigma,
    dpmpp_3m_step,
    gaussian_toy,
    make_schedule,
    make_timesteps,
    sample,
    solvers,
)
from casc_jax.diffusion.schedules import t_of_lambda

T = 1000


def _np_log_abar(T=T, b0=0.0015, b1=0.0195):
    betas = np.linspace(np.sqrt(b0), np.sqrt(b1), T, dtype=np.float64) ** 2
    return np.cumsum(np.log(1.0 - betas))


def _np_alpha_sigma_lambda(t):
    """float64 reference of the continuous schedule: log abar linear between integer timesteps."""
    la = np.interp(np.asarray(t, np.float64), np.arange(T), _np_log_abar())
    alpha, sigma = np.exp(0.5 * la), np.sqrt(1.0 - np.exp(la))
    return alpha, sigma, np.log(alpha / sigma)


def _toy_eps(x, t):
    """A bounded nonlinear denoiser that depends on x and t (B,) (int or real)."""
    return 0.8 * jnp.tanh(x) + 2e-4 * t[:, None].astype(x.dtype) - 0.1 * jnp.sin(3 * x)


# ----------------------------------------------------------------------------- continuous time


def test_continuous_schedule_matches_discrete_and_float64_interpolation():
    sch = make_schedule("ldm_linear", T)
    ti = jnp.array([0, 1, 499, 999])
    a, s = alpha_sigma(sch, ti)
    np.testing.assert_allclose(a, sch.sqrt_alphas_cumprod[ti], rtol=2e-6)
    np.testing.assert_allclose(s, sch.sqrt_one_minus_alphas_cumprod[ti], rtol=2e-5)
    tr = np.array([0.0, 0.25, 17.5, 640.3, 998.9, 999.0])
    a, s = alpha_sigma(sch, jnp.asarray(tr, jnp.float32))
    a_ref, s_ref, lam_ref = _np_alpha_sigma_lambda(tr)
    np.testing.assert_allclose(a, a_ref, rtol=1e-5)
    np.testing.assert_allclose(s, s_ref, rtol=1e-4)
    # t(lambda) inverts lambda(t) exactly
    np.testing.assert_allclose(t_of_lambda(_np_log_abar(), lam_ref), tr, atol=1e-6)


def test_logsnr_grid_is_uniform_in_lambda_at_real_timesteps():
    log_abar = _np_log_abar()
    for S in (2, 5, 20):
        ts = make_timesteps(T, S, "logsnr_cont", log_alphas_cumprod=log_abar)
        assert ts.dtype == np.float64 and ts[0] == T - 1 and ts[-1] == 0 and np.all(np.diff(ts) < 0)
        lam = _np_alpha_sigma_lambda(ts)[2]
        np.testing.assert_allclose(np.diff(lam), (lam[-1] - lam[0]) / (S - 1), rtol=1e-9)
    assert np.any(ts != np.round(ts))  # real-valued, not rounded
    # the denoiser receives float32 t on this grid, int32 on the integer grids
    seen = []
    sch = make_schedule("ldm_linear", 50)
    for spacing, dtype in (("logsnr_cont", jnp.float32), ("logsnr", jnp.int32), ("uniform", jnp.int32)):
        sample(lambda x, t: seen.append(t.dtype) or x * 0, sch, (2, 3), jax.random.key(0),
               SamplerSpec("ddim", steps=4, spacing=spacing))
        assert seen[-1] == dtype


def test_sampler_spec_from_config_defaults_to_logsnr():
    spec = SamplerSpec.of({"name": "dpmpp_3m", "steps": 10, "dtype": "float32"})
    assert spec == SamplerSpec("dpmpp_3m", steps=10, eta=0.0, spacing="logsnr") and spec.compute_dtype is None
    spec = SamplerSpec.of({"name": "dpmpp_3m", "steps": 10, "spacing": "", "corrector": 2, "final_order": None})
    assert spec.spacing == "logsnr" and spec.corrector == 2 and spec.final_order is None
    assert SamplerSpec.of({"name": "ddpm", "steps": 0}).steps is None  # 0: every timestep
    assert SamplerSpec.of({"steps": [5, 3, 1]}).steps == (5, 3, 1)  # hashable: usable as a static argument
    assert SamplerSpec.of({"dtype": "bfloat16"}).compute_dtype == jnp.bfloat16
    assert SamplerSpec.of(None) == SamplerSpec() and SamplerSpec.of(spec) is spec
    with pytest.raises(ValueError, match="unknown sampler option"):
        SamplerSpec.of({"name": "ddim", "stpes": 10})


# ----------------------------------------------------------------------------- the solver in float64


def test_exp_weights_integrate_polynomials_exactly():
    rng = np.random.default_rng(0)
    lam_s, lam_t = 0.3, 1.2
    nodes = np.array([lam_s, lam_s - 0.5, lam_s - 1.1, lam_s - 1.4])
    w = solvers.exp_weights(nodes, lam_s, lam_t)
    grid = np.linspace(lam_s, lam_t, 200001)
    for deg in range(4):
        c = rng.standard_normal(deg + 1)
        integrand = np.exp(grid - lam_t) * np.polyval(c, grid)
        ref = np.trapezoid(integrand, grid) if hasattr(np, "trapezoid") else np.trapz(integrand, grid)
        np.testing.assert_allclose(w @ np.polyval(c, nodes), ref, rtol=1e-8, atol=1e-10)


def _dpmpp_3m_ref(x, d0, d1, d2, lam, al_t, sg_s, sg_t, factor=2.0):
    """Lu et al.'s multistep third-order update (phi_1, phi_2, phi_3, D1, D2) in float64."""
    lam_p2, lam_p1, lam_s, lam_t = lam
    h, h0, h1 = lam_t - lam_s, lam_s - lam_p1, lam_p1 - lam_p2
    r0, r1 = h0 / h, h1 / h
    d1_0, d1_1 = (d0 - d1) / r0, (d1 - d2) / r1
    D1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    D2 = (d1_0 - d1_1) / (r0 + r1)
    phi1 = np.expm1(-h)
    phi2 = phi1 / h + 1.0
    phi3 = phi2 / h - 0.5
    return sg_t / sg_s * x - al_t * phi1 * d0 + al_t * phi2 * D1 - factor * al_t * phi3 * D2


def test_one_dpmpp_3m_step_against_float64():
    sch = make_schedule("ldm_linear", T)
    rng = np.random.default_rng(3)
    x, d1, d2 = (rng.standard_normal((5, 3)) for _ in range(3))
    s_p2, s_p1, s, t = 820.5, 760.25, 700.75, 610.5  # real-valued, as on the continuous grid
    al, sg, lam = _np_alpha_sigma_lambda([s_p2, s_p1, s, t])
    eps = np.asarray(_toy_eps(jnp.asarray(x, jnp.float32), jnp.full((5,), s, jnp.float32)), np.float64)
    d0 = (x - sg[2] * eps) / al[2]
    ref = _dpmpp_3m_ref(x, d0, d1, d2, lam, al[3], sg[2], sg[3])
    f32 = lambda v: jnp.asarray(v, jnp.float32)
    got, got_d = dpmpp_3m_step(_toy_eps, sch, f32(x), np.float32(s), t, (f32(d1), f32(d2)), (s_p1, s_p2))
    np.testing.assert_allclose(np.asarray(got_d), d0, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4, atol=1e-4)
    # the third-order term is resolved: the reference implementations' phi_3 D2 (factor 1) is not this
    assert np.abs(ref - _dpmpp_3m_ref(x, d0, d1, d2, lam, al[3], sg[2], sg[3], 1.0)).max() > 1e-3


def test_3m_converges_at_third_order_and_the_halved_term_at_second():
    """On the Gaussian ODE (exact D), from exact starting values: error vs steps of the 3M update alone."""
    rng = np.random.default_rng(0)
    mu, s = rng.standard_normal(16), rng.uniform(0.5, 2.0, 16)
    z = rng.standard_normal((8, 16))
    asl = lambda lam: (1 / np.sqrt(1 + np.exp(-2 * lam)), 1 / np.sqrt(1 + np.exp(2 * lam)))

    def exact(lam):
        a, sg = asl(lam)
        return a * mu + np.sqrt(a * a * s * s + sg * sg) * z

    def data_pred(x, lam):
        a, sg = asl(lam)
        return mu + s**2 * a / (a * a * s * s + sg * sg) * (x - a * mu)

    def error(n, halved):
        lams = np.linspace(-3.0, 3.0, n)
        x, hist = exact(lams[2]), [data_pred(exact(lam), lam) for lam in lams[:2]]
        for i in range(2, n - 1):
            hist.append(data_pred(x, lams[i]))
            (al_t, sg_t), (_, sg_s) = asl(lams[i + 1]), asl(lams[i])
            if halved:  # the reference implementations' phi_3 D2
                x = _dpmpp_3m_ref(x, hist[-1], hist[-2], hist[-3], lams[i - 2 : i + 2], al_t, sg_s, sg_t, 1.0)
            else:  # the solver's own weights
                w = al_t * solvers.predictor_weights(lams[i - 2 : i + 1][::-1], lams[i + 1], 3)
                x = sg_t / sg_s * x + w[0] * hist[-1] + w[1] * hist[-2] + w[2] * hist[-3]
        return np.sqrt(np.mean((x - exact(lams[-1])) ** 2))

    for halved, lo, hi in ((False, 2.7, 4.5), (True, 1.7, 2.4)):
        errs = [error(n, halved) for n in (21, 41, 81)]
        slopes = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
        assert np.all((slopes > lo) & (slopes < hi)), (halved, errs, slopes)


# ----------------------------------------------------------------------------- chains


def test_multistep_engine_at_order_2_is_dpmpp_2m():
    """The planned chain with order 2, no corrector and a first-order end is the in-graph 2M chain."""
    sch = make_schedule("ldm_linear", T)
    x_T = jax.random.normal(jax.random.key(4), (3, 2))
    ts = make_timesteps(T, 9, "logsnr_cont", log_alphas_cumprod=sch.log_alphas_cumprod)
    al, sg, lam = solvers.grid_coefficients(sch, ts)
    coef = solvers.plan(al, sg, lam, order=2, corrector=0, final_order=1)
    carry, body, xs, final = solvers.multistep_chain(_toy_eps, ts, al, sg, coef, x_T, None)
    got = final(jax.lax.scan(body, carry, xs)[0])
    spec = SamplerSpec("dpmpp_2m", steps=9, spacing="logsnr_cont")
    ref = sample(_toy_eps, sch, x_T.shape, jax.random.key(0), spec, x_T=x_T)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def toy():
    return make_schedule("ldm_linear", T), gaussian_toy.toy()


def test_default_fast_sampler_on_the_gaussian_toy(toy):
    """rms error against the exact probability-flow map (the issue's bars: diffusers' best 2M)."""
    sch, problem = toy
    err = lambda n, **kw: gaussian_toy.rms_error(sch, problem, n, **kw)
    fast = {n: err(n, name=FAST_SAMPLER) for n in (5, 10, 20)}  # default spacing: 'logsnr'
    base = {n: err(n, name="dpmpp_2m", spacing="logsnr") for n in (5, 20)}
    assert fast[10] < 0.0138 and fast[20] < 0.0052, fast
    assert fast[5] < base[5], (fast, base)
    assert fast[20] < 0.5 * base[20], (fast, base)  # third order pays off once steps are short
    # the corrector with 4 nodes and the second-order last step gain more at 5 steps
    assert err(5, name=FAST_SAMPLER, corrector=3, final_order=2) < 0.95 * base[5]
