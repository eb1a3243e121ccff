"""PSNR / MSE against the float64 numpy closed form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from casc_jax.metrics import mse, psnr


def _np_psnr(x, y, data_range):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m = ((x - y) ** 2).reshape(x.shape[0], -1).mean(axis=1)
    return m, 10 * np.log10(data_range**2 / m)


def test_psnr_and_mse_match_float64_numpy():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32)
    y = np.clip(x + rng.normal(0, [0.01, 0.05, 0.1, 0.3], (8, 8, 3, 4)).transpose(3, 0, 1, 2), -1, 1)
    y = y.astype(np.float32)
    want_mse, want_psnr = _np_psnr(x, y, 2.0)
    np.testing.assert_allclose(np.asarray(mse(x, y)), want_mse, rtol=1e-5)
    got = np.asarray(psnr(jnp.asarray(x), jnp.asarray(y)))
    assert got.shape == (4,)
    np.testing.assert_allclose(got, want_psnr, atol=1e-4)
    # PSNR falls as the noise grows
    assert np.all(np.diff(got) < 0)


def test_psnr_data_range_and_known_value():
    # x = 0, y = 0.1 everywhere: MSE = 0.01, PSNR = 10 log10(1 / 0.01) = 20 dB for range 1,
    # and 10 log10(4 / 0.01) = 26.0206 dB for range 2.
    x = jnp.zeros((1, 4, 4, 3))
    y = jnp.full((1, 4, 4, 3), 0.1)
    np.testing.assert_allclose(np.asarray(psnr(x, y, data_range=1.0)), [20.0], atol=1e-4)
    np.testing.assert_allclose(np.asarray(psnr(x, y)), [10 * np.log10(400.0)], atol=1e-4)
    x255, y255 = np.zeros((2, 4, 4, 3)), np.full((2, 4, 4, 3), 255.0)
    np.testing.assert_allclose(np.asarray(psnr(x255, y255, data_range=255.0)), [0.0, 0.0], atol=1e-5)


def test_identical_images_give_inf():
    x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 5, 5, 3)), jnp.float32)
    y = x.at[1, 0, 0, 0].add(0.5)
    out = np.asarray(psnr(x, y))
    assert np.isposinf(out[0]) and np.isfinite(out[1])
    assert np.asarray(mse(x, x)).tolist() == [0.0, 0.0]


def test_psnr_jits():
    x = jnp.zeros((3, 4, 4, 3))
    y = jnp.full((3, 4, 4, 3), 0.5)
    np.testing.assert_allclose(np.asarray(jax.jit(psnr)(x, y)), np.full(3, 10 * np.log10(16.0)), atol=1e-4)


def test_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        psnr(jnp.zeros((1, 4, 4, 3)), jnp.zeros((1, 4, 4, 1)))
    with pytest.raises(ValueError, match="data_range"):
        psnr(jnp.zeros((1, 4, 4, 3)), jnp.zeros((1, 4, 4, 3)), data_range=0.0)
