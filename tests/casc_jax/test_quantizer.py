"""The VQ bottleneck: nearest code, straight-through gradient, codebook loss, and l2-normalised codes."""

import jax
import jax.numpy as jnp
import numpy as np

from casc_jax.casc.autoencoder import VectorQuantizer


def _codes(params):
    return np.asarray(params["params"]["codebook"], np.float64)


def test_nearest_code_loss_and_straight_through():
    vq = VectorQuantizer(num_codes=16, beta=0.25)
    z = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
    params = vq.init(jax.random.key(1), z)
    z_q, loss, idx = vq.apply(params, z)
    codes, flat = _codes(params), np.asarray(z, np.float64).reshape(-1, 3)
    expected = np.argmin(((flat[:, None] - codes[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(np.asarray(idx).ravel(), expected)
    np.testing.assert_allclose(np.asarray(z_q).reshape(-1, 3), codes[expected], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(float(loss), 1.25 * np.mean((flat - codes[expected]) ** 2), rtol=1e-5)
    grad = jax.grad(lambda z: jnp.sum(vq.apply(params, z)[0] * 3.0))(z)  # identity to z: straight-through
    np.testing.assert_allclose(np.asarray(grad), 3.0, rtol=1e-6)


def test_l2_codes_compare_directions_and_return_unit_vectors():
    vq = VectorQuantizer(num_codes=64, beta=0.25, l2_normalize=True)
    z = 5.0 * jax.random.normal(jax.random.key(0), (2, 4, 4, 3))  # the encoder's scale does not matter
    params = vq.init(jax.random.key(1), z)
    z_q, loss, idx = vq.apply(params, z)
    codes = _codes(params)
    codes /= np.linalg.norm(codes, axis=1, keepdims=True)
    flat = np.asarray(z, np.float64).reshape(-1, 3)
    flat /= np.linalg.norm(flat, axis=1, keepdims=True)
    expected = np.argmax(flat @ codes.T, axis=1)  # nearest on the sphere = largest cosine
    np.testing.assert_array_equal(np.asarray(idx).ravel(), expected)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(z_q).reshape(-1, 3), axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(float(loss), 1.25 * np.mean((flat - codes[expected]) ** 2), rtol=1e-4)
    assert len(np.unique(expected)) > 16  # the near-zero random init still spreads codes over the sphere
