"""Frechet distance against closed forms; the Flax FID InceptionV3: shapes, resize, weight conversion."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from casc_jax.metrics import (
    InceptionV3FID,
    activation_statistics,
    convert_pytorch_fid_state_dict,
    fid_from_activations,
    frechet_distance,
    load_inception,
    load_inception_variables,
    random_inception_variables,
    save_inception_weights,
)
from casc_jax.metrics.inception import BasicConv2d, _flatten, map_pytorch_fid_entry, resize_bilinear


def _random_psd(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / (rank or d)


# ----------------------------------------------------------------------------- Frechet distance


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_frechet_distance_diagonal_closed_form(method):
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    s1, s2 = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
    # diagonal covariances commute: Tr((S1 S2)^1/2) = sum sqrt(s1 s2)
    want = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    got = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2), method=method)
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_frechet_distance_1d_gaussians():
    # N(1, 4) vs N(-2, 1): (1 + 2)^2 + (sqrt(4) - sqrt(1))^2 = 9 + 1 = 10
    assert frechet_distance(1.0, 4.0, -2.0, 1.0) == pytest.approx(10.0, abs=1e-12)
    assert frechet_distance([0.0], [[1.0]], [0.0], [[1.0]]) == pytest.approx(0.0, abs=1e-12)


def test_frechet_distance_general_properties():
    rng = np.random.default_rng(1)
    d = 10
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = _random_psd(rng, d), _random_psd(rng, d)
    f12 = frechet_distance(mu1, s1, mu2, s2)
    # symmetric; both routes agree on full-rank PSD matrices
    assert f12 == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)
    assert f12 == pytest.approx(frechet_distance(mu1, s1, mu2, s2, method="sqrtm"), rel=1e-7)
    # zero for identical statistics, positive otherwise
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-9
    assert f12 > 0
    # same covariance, shifted mean: exactly ||mu1 - mu2||^2
    assert frechet_distance(mu1, s1, mu2, s1) == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-8)


def test_frechet_distance_singular_covariances():
    rng = np.random.default_rng(2)
    d = 8
    s1, s2 = _random_psd(rng, d, rank=3), _random_psd(rng, d, rank=2)  # rank deficient
    mu = np.zeros(d)
    # reference: Tr((S1 S2)^1/2) = sum of sqrt of the eigenvalues of S1 S2 (real, >= 0)
    ev = np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)
    want = np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(ev))
    got = frechet_distance(mu, s1, mu, s2)
    assert np.isfinite(got)
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(frechet_distance(mu, s1, mu, s2, method="sqrtm"), want, atol=1e-4)
    assert abs(frechet_distance(mu, s1, mu, s1)) < 1e-7


def test_activation_statistics_and_fid_from_activations():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((500, 4)) * [1.0, 2.0, 0.5, 1.0] + [0.0, 1.0, 0.0, -1.0]
    mu, sigma = activation_statistics(a.astype(np.float32))
    np.testing.assert_allclose(mu, a.mean(0), rtol=1e-6)
    centred = a - a.mean(0)
    np.testing.assert_allclose(sigma, centred.T @ centred / (len(a) - 1), rtol=1e-6)
    assert fid_from_activations(a, a) == pytest.approx(0.0, abs=1e-9)
    b = a + [3.0, 0.0, 0.0, 0.0]  # translation: FID = 9
    assert fid_from_activations(a, b) == pytest.approx(9.0, rel=1e-9)


def test_frechet_distance_bad_input():
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.zeros(2), np.eye(2) * np.nan, np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="N >= 2"):
        activation_statistics(np.zeros((1, 5)))
    with pytest.raises(ValueError, match="method"):
        frechet_distance(0.0, 1.0, 0.0, 1.0, method="svd")


# ----------------------------------------------------------------------------- InceptionV3


def _torch_bilinear_1d_matrix(n_in, n_out):
    """Interpolation matrix of torch F.interpolate(bilinear, align_corners=False) along one axis."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(np.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        lam = src - i0
        m[i, i0] += 1 - lam
        m[i, i1] += lam
    return m


@pytest.mark.parametrize("n_in", [32, 37, 400])
def test_resize_matches_torch_bilinear(n_in):
    rng = np.random.default_rng(n_in)
    x = rng.uniform(-1, 1, (1, n_in, n_in + 3, 2))
    mh, mw = _torch_bilinear_1d_matrix(n_in, 299), _torch_bilinear_1d_matrix(n_in + 3, 299)
    want = np.einsum("ih,bhwc,jw->bijc", mh, x, mw, optimize=True)
    got = np.asarray(resize_bilinear(jnp.asarray(x, jnp.float32), 299))
    # jax computes the sample positions in float32: ~1e-7 * n_in error, far below 1/255 pixel steps
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.fixture(scope="module")
def variables():
    return random_inception_variables(0)


def test_inception_forward_shapes(variables):
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, 75, 75, 3)), jnp.float32)
    small = jax.jit(InceptionV3FID(resize_input=False).apply)(variables, x)
    assert small.shape == (1, 2048) and bool(jnp.all(jnp.isfinite(small)))
    # the FID path: resize a CIFAR-size image to 299 first (batch 1 to stay cheap on CPU)
    full = jax.jit(InceptionV3FID().apply)(variables, x[:, :32, :32])
    assert full.shape == (1, 2048) and bool(jnp.all(full >= 0))  # mean of ReLU outputs
    with pytest.raises(ValueError, match="75x75"):
        InceptionV3FID(resize_input=False).apply(variables, x[:, :64, :64])


def _torch_state_dict_from(variables):
    """Inverse of the documented mapping, plus the entries the converter must skip."""
    sd = {}
    for key, v in _flatten(variables).items():
        collection, *path, leaf = key.split("/")
        name = ".".join(path)
        if leaf == "kernel":
            sd[f"{name}.weight"] = np.transpose(np.asarray(v), (3, 2, 0, 1))  # (O, I, kh, kw)
        else:
            torch_leaf = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
            sd[f"{name}.{torch_leaf[leaf]}"] = np.asarray(v)
            if leaf == "mean":
                sd[f"{name}.num_batches_tracked"] = np.array(0)
    sd["fc.weight"], sd["fc.bias"] = np.zeros((1008, 2048)), np.zeros(1008)
    return sd


def _np_basic_conv(x, w, gamma, beta, mean, var, stride, pad):
    """float64 torch semantics: cross-correlation with weight (O, I, kh, kw), BN eps 1e-3, ReLU."""
    (ph, pw) = pad
    x = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    o, _, kh, kw = w.shape
    ho, wo = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    y = np.zeros((x.shape[0], ho, wo, o))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i : i + stride * ho : stride, j : j + stride * wo : stride, :]
            y += patch @ w[:, :, i, j].T
    y = (y - mean) / np.sqrt(var + 1e-3) * gamma + beta
    return np.maximum(y, 0)


def test_convert_pytorch_fid_state_dict(variables, tmp_path):
    sd = _torch_state_dict_from(variables)
    converted = convert_pytorch_fid_state_dict(sd)
    want = {k: np.asarray(v) for k, v in _flatten(variables).items()}
    got = _flatten(converted)
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    w = sd["Mixed_6b.branch7x7_2.conv.weight"]  # (O, I, 1, 7) -> (1, 7, I, O)
    assert converted["params"]["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"][0, 5, 3, 2] == w[2, 3, 0, 5]

    # file round trip through the documented .npz format
    path = os.fspath(tmp_path / "inception.npz")
    save_inception_weights(converted, path)
    loaded = _flatten(load_inception_variables(path))
    assert set(loaded) == set(got)
    assert all(np.array_equal(np.asarray(loaded[k]), got[k]) for k in got)

    bad = dict(sd)
    del bad["Mixed_7c.branch_pool.bn.running_var"]
    with pytest.raises(ValueError, match="missing"):
        convert_pytorch_fid_state_dict(bad)
    with pytest.raises(ValueError, match="wrong shape"):
        convert_pytorch_fid_state_dict(dict(sd, **{"Conv2d_1a_3x3.conv.weight": np.zeros((5, 3, 3, 3))}))
    with pytest.raises(ValueError, match="unexpected keys"):
        convert_pytorch_fid_state_dict(dict(sd, **{"blocks.0.0.conv.weight_x": np.zeros(1)}))


def test_converted_layer_computes_torch_conv_bn_relu():
    """One BasicConv2d with torch-layout weights, mapped entry by entry as the converter does."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 3, 1, 3))  # (O, I, kh, kw), a 1x3 conv as in the factorised blocks
    gamma, beta = rng.uniform(0.5, 2, 5), rng.standard_normal(5)
    mean, var = rng.standard_normal(5), rng.uniform(0.5, 2, 5)
    sd = {"conv.weight": w, "bn.weight": gamma, "bn.bias": beta}
    sd.update({"bn.running_mean": mean, "bn.running_var": var})
    layer_vars: dict = {"params": {}, "batch_stats": {}}
    for key, value in sd.items():
        collection, path, value = map_pytorch_fid_entry(key, value)
        layer_vars[collection].setdefault(path[0], {})[path[1]] = jnp.asarray(value)
    assert map_pytorch_fid_entry("fc.weight", np.zeros((2, 2))) is None
    x = rng.standard_normal((2, 6, 7, 3))
    got = BasicConv2d(5, (1, 3), strides=2, padding=(0, 1)).apply(layer_vars, jnp.asarray(x, jnp.float32))
    want = _np_basic_conv(x, w, gamma, beta, mean, var, stride=2, pad=(0, 1))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def test_missing_weights_file(tmp_path, monkeypatch):
    missing = os.fspath(tmp_path / "absent.npz")
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05"):
        load_inception(missing)
    monkeypatch.setenv("CASC_JAX_INCEPTION_WEIGHTS", missing)
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        load_inception()
