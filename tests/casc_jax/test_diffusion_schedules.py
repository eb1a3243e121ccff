"""Schedules, q_sample, predict_x0 and the epsilon loss against float64 numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from casc_jax.diffusion import epsilon_loss, make_schedule, predict_x0, q_sample

B0, B1 = 0.0015, 0.0195


def _reference(kind, T, b0=B0, b1=B1):
    """Float64 DDPM/LDM schedule quantities written out from the formulas."""
    if kind == "ldm_linear":
        betas = np.array([(np.sqrt(b0) + (np.sqrt(b1) - np.sqrt(b0)) * i / (T - 1)) ** 2 for i in range(T)])
    else:
        betas = np.array([b0 + (b1 - b0) * i / (T - 1) for i in range(T)])
    abar = np.ones(T)
    acc = 1.0
    for i in range(T):
        acc *= 1.0 - betas[i]
        abar[i] = acc
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    post_var = betas * (1 - abar_prev) / (1 - abar)
    return {
        "betas": betas,
        "alphas_cumprod": abar,
        "alphas_cumprod_prev": abar_prev,
        "sqrt_alphas_cumprod": np.sqrt(abar),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1 - abar),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": np.log(np.concatenate([[post_var[1]], post_var[1:]])),
        "posterior_mean_coef1": betas * np.sqrt(abar_prev) / (1 - abar),
        "posterior_mean_coef2": (1 - abar_prev) * np.sqrt(1 - betas) / (1 - abar),
        "log_alphas_cumprod": np.log(abar),
    }


@pytest.mark.parametrize("kind", ["ldm_linear", "linear"])
@pytest.mark.parametrize("T", [1000, 50])
def test_schedule_matches_float64_reference(kind, T):
    sch = make_schedule(kind, T)
    assert sch.num_timesteps == T
    for name, ref in _reference(kind, T).items():
        got = getattr(sch, name)
        assert got.dtype == jnp.float32 and got.shape == (T,), name
        np.testing.assert_allclose(np.asarray(got, np.float64), ref, rtol=2e-6, atol=1e-9, err_msg=name)


def test_ldm_linear_endpoints_and_difference_from_linear():
    ldm, lin = make_schedule("ldm_linear"), make_schedule("linear")
    np.testing.assert_allclose([ldm.betas[0], ldm.betas[-1]], [B0, B1], rtol=1e-6)
    np.testing.assert_allclose([lin.betas[0], lin.betas[-1]], [B0, B1], rtol=1e-6)
    # linear in sqrt(beta) lies below the plain line in the middle (convexity of the square)
    mid = 500
    assert ldm.betas[mid] < lin.betas[mid]
    sqrt_mid = np.sqrt(B0) + (np.sqrt(B1) - np.sqrt(B0)) * mid / 999
    np.testing.assert_allclose(np.sqrt(ldm.betas[mid]), sqrt_mid, rtol=1e-6)
    # LDM's default schedule ends with abar_{T-1} ~ 1.4e-4 (nearly pure noise)
    assert 1e-4 < float(ldm.alphas_cumprod[-1]) < 2e-4


def test_unknown_kind_and_bad_betas_raise():
    with pytest.raises(ValueError, match="ldm_linear"):
        make_schedule("cosine")
    with pytest.raises(ValueError, match="beta_start"):
        make_schedule("linear", 10, beta_start=0.1, beta_end=0.01)
    with pytest.raises(ValueError, match="num_timesteps"):
        make_schedule("linear", 0)


def test_schedule_is_a_pytree_usable_under_jit():
    sch = make_schedule("ldm_linear", 20)
    assert len(jax.tree.leaves(sch)) == 10
    f = jax.jit(lambda s: s.betas.sum() + s.num_timesteps)
    ref = float(np.sum(_reference("ldm_linear", 20)["betas"])) + 20
    np.testing.assert_allclose(float(f(sch)), ref, rtol=1e-6)


def test_q_sample_predict_x0_and_loss_against_numpy():
    T = 1000
    sch = make_schedule("ldm_linear", T)
    ref = _reference("ldm_linear", T)
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((4, 8, 8, 3))
    noise = rng.standard_normal((4, 8, 8, 3))
    t = np.array([0, 10, 500, 999])
    a = np.sqrt(ref["alphas_cumprod"][t])[:, None, None, None]
    xt_ref = a * x0 + np.sqrt(1 - a**2) * noise
    f32 = lambda v: jnp.asarray(v, jnp.float32)
    xt = q_sample(sch, f32(x0), jnp.asarray(t), f32(noise))
    np.testing.assert_allclose(np.asarray(xt), xt_ref, rtol=1e-5, atol=1e-5)
    # predict_x0 inverts the forward marginal given the true noise (float32: 1/sqrt(abar) ~ 84 at t=999)
    x0_hat = predict_x0(sch, xt, jnp.asarray(t), f32(noise))
    np.testing.assert_allclose(np.asarray(x0_hat), x0, atol=2e-4)
    # eq. 10: per-example mean squared error
    pred = rng.standard_normal(noise.shape)
    loss = epsilon_loss(f32(pred), f32(noise))
    assert loss.shape == (4,)
    np.testing.assert_allclose(np.asarray(loss), ((pred - noise) ** 2).reshape(4, -1).mean(1), rtol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        epsilon_loss(f32(pred), f32(noise[:, :4]))
