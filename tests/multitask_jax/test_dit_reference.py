"""The DiT decoder against the reference DiT (facebookresearch/DiT, models.py), whose formulas are re-derived
here in plain numpy: 2D sin-cos positional encoding, timestep embedding, LayerNorm, the adaLN-Zero block and
`initialize_weights`' statistics."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from casc_jax.nn.layers import timestep_embedding
from configs.multitask_models_base import dit_preset
from multitask_jax import dit as dit_lib

# ------------------------------------------------------------------------------- numpy references


def _ref_1d(dim, pos):
    """DiT's get_1d_sincos_pos_embed_from_grid: omega_k = 1 / 10000^(k / (dim/2)); [sin | cos]."""
    k = np.arange(dim // 2, dtype=np.float64)
    omega = 1.0 / 10000.0 ** (k / (dim / 2.0))
    out = np.outer(pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def _ref_2d(dim, height, width, swap=False):
    """DiT's get_2d_sincos_pos_embed on a height x width grid: meshgrid(w, h) with w first, stacked, and the
    first half encodes grid[0] (the width / column coordinate). swap=True is the row-first order."""
    grid_h = np.arange(height, dtype=np.float32)
    grid_w = np.arange(width, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape(2, 1, height, width)
    first, second = (grid[1], grid[0]) if swap else (grid[0], grid[1])
    return np.concatenate([_ref_1d(dim // 2, first), _ref_1d(dim // 2, second)], axis=1)


def _ref_timestep(t, dim, max_period=10000.0):
    """DiT's TimestepEmbedder.timestep_embedding (GLIDE): float32 freqs, [cos | sin], a zero column if odd."""
    half = dim // 2
    freqs = np.exp(-math.log(max_period) * np.arange(half, dtype=np.float32) / half).astype(np.float32)
    args = np.asarray(t, np.float32)[:, None] * freqs[None]
    emb = np.concatenate([np.cos(args), np.sin(args)], axis=-1)
    if dim % 2:
        emb = np.concatenate([emb, np.zeros_like(emb[:, :1])], axis=-1)
    return emb


def _ref_layer_norm(x, eps=1e-6):
    x = np.asarray(x, np.float64)
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps)


def _ref_dit_block(p, x, c, num_heads):
    """DiTBlock.forward with timm's Attention (one qkv linear, heads split as (3, heads, head_dim)) and Mlp
    (tanh GELU); Flax Dense kernels are (in, out), i.e. torch's weight transposed."""
    x, c = np.asarray(x, np.float64), np.asarray(c, np.float64)

    def lin(name, h):
        return h @ np.asarray(p[name]["kernel"], np.float64) + np.asarray(p[name]["bias"], np.float64)

    silu_c = c / (1.0 + np.exp(-c))
    shift1, scale1, gate1, shift2, scale2, gate2 = np.split(lin("adaLN_modulation", silu_c), 6, axis=1)
    b, n, d = x.shape
    hd = d // num_heads
    h = _ref_layer_norm(x) * (1 + scale1[:, None]) + shift1[:, None]
    qkv = lin("qkv", h).reshape(b, n, 3, num_heads, hd).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    logits = q @ k.transpose(0, 1, 3, 2) * hd**-0.5
    attn = np.exp(logits - logits.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)
    h = (attn @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
    x = x + gate1[:, None] * lin("proj", h)
    h = _ref_layer_norm(x) * (1 + scale2[:, None]) + shift2[:, None]
    h = lin("fc1", h)
    h = 0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
    return x + gate2[:, None] * lin("fc2", h)


# ------------------------------------------------------------------------------ positional encoding


@pytest.mark.parametrize("dim,height,width", [(16, 3, 5), (32, 4, 4), (8, 5, 3)])
def test_pos_embed_matches_dit_reference(dim, height, width):
    ours = dit_lib.sincos_pos_embed_2d(dim, height, width)
    assert ours.shape == (height * width, dim) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, _ref_2d(dim, height, width), rtol=0, atol=1e-6)
    np.testing.assert_allclose(dit_lib.sincos_pos_embed_1d(dim, np.arange(7.0)), _ref_1d(dim, np.arange(7.0)),
                               rtol=0, atol=1e-12)


def test_pos_embed_half_order_is_column_first_on_a_non_square_grid():
    ours = dit_lib.sincos_pos_embed_2d(16, 3, 5)
    swapped = _ref_2d(16, 3, 5, swap=True)
    assert np.abs(ours - swapped).max() > 0.5  # the row-first order is told apart
    # token (row 2, col 3) = index 2 * 5 + 3: first half encodes the column 3, second half the row 2
    omega = 1.0 / 10000.0 ** (np.arange(4) / 4.0)
    expected = np.concatenate([np.sin(3 * omega), np.cos(3 * omega), np.sin(2 * omega), np.cos(2 * omega)])
    np.testing.assert_allclose(ours[13], expected, atol=1e-6)


def test_model_adds_the_pos_embed_of_its_non_square_token_grid():
    # tiny: pixel_factor 4, patch 2 -> a 24 x 40 image is a 3 x 5 token grid. With a zero patch embedding the
    # first block (the identity at init) returns exactly the positional encoding.
    cfg = dit_lib.DiTConfig(**dit_preset("tiny"))
    model = dit_lib.DiT(cfg)
    x_t = jax.random.normal(jax.random.key(0), (2, 24, 40, 3))
    t = jnp.array([3, 7])
    y, g = jnp.ones((2, 2, 3, 4)), jnp.ones((2, 2, 3, 2))
    params = model.init(jax.random.key(1), x_t, t, y, g)["params"]
    params = dict(params, patch_embed=jax.tree.map(jnp.zeros_like, params["patch_embed"]))
    _, state = model.apply({"params": params}, x_t, t, y, g, capture_intermediates=True)
    tokens = state["intermediates"]["block0"]["__call__"][0]
    np.testing.assert_allclose(tokens, np.broadcast_to(_ref_2d(cfg.hidden_size, 3, 5), tokens.shape), atol=1e-6)


# -------------------------------------------------------------------------------- timestep embedding


@pytest.mark.parametrize("dim", [32, 33, 256])
def test_timestep_embedding_matches_dit_reference(dim):
    t = np.array([0.0, 1.0, 17.5, 999.0], np.float32)
    ours = np.asarray(timestep_embedding(jnp.asarray(t), dim))
    np.testing.assert_allclose(ours, _ref_timestep(t, dim), rtol=1e-5, atol=1e-4)
    assert np.all(ours[0, : dim // 2] == 1.0) and np.all(ours[0, dim // 2:] == 0.0)  # [cos | sin] at t = 0


# ----------------------------------------------------------------------------------------- LayerNorm


def test_layer_norm_is_two_pass_and_exact_for_a_large_mean():
    x = 1e4 + jax.random.normal(jax.random.key(0), (4, 64), jnp.float32)
    ln = dit_lib._norm("norm")
    variables = ln.init(jax.random.key(1), x)
    assert variables == {}  # elementwise_affine=False: no scale, no bias
    ref = _ref_layer_norm(x)
    # two-pass in float32: only the mean's rounding (an ulp of 1e4 is ~1e-3) remains
    np.testing.assert_allclose(ln.apply(variables, x), ref, atol=5e-3)
    # the fast E[x^2] - E[x]^2 variance loses the unit variance next to 1e8 (off by ~10^3 here)
    fast = nn.LayerNorm(epsilon=1e-6, use_scale=False, use_bias=False, use_fast_variance=True).apply({}, x)
    assert np.abs(np.asarray(fast) - ref).max() > 1.0


# --------------------------------------------------------------------------------------- DiT block


def test_dit_block_matches_numpy_reference():
    block = dit_lib.DiTBlock(num_heads=4)
    x = jax.random.normal(jax.random.key(0), (2, 6, 32))
    c = jax.random.normal(jax.random.key(1), (2, 32))
    params = block.init(jax.random.key(2), x, c)["params"]
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(3), len(leaves))
    params = jax.tree.unflatten(tree, [0.2 * jax.random.normal(k, v.shape) for k, v in zip(keys, leaves)])
    ours = block.apply({"params": params}, x, c)
    np.testing.assert_allclose(ours, _ref_dit_block(params, x, c, 4), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------- initialisation


def _uniform_check(w, fan_in, fan_out, rtol=0.1):
    """xavier_uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out)), variance 2 / (fan_in + fan_out)."""
    w = np.asarray(w, np.float64)
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    assert np.abs(w).max() <= bound * (1 + 1e-6) and np.abs(w).max() > 0.9 * bound
    assert w.var() == pytest.approx(2.0 / (fan_in + fan_out), rel=rtol)
    assert abs(w.mean()) < 0.05 * bound


def test_initialisation_follows_dit_initialize_weights():
    cfg = dit_lib.DiTConfig(**dit_preset("tiny", hidden_size=64, depth=2, num_heads=2, freq_dim=64))
    model = dit_lib.DiT(cfg)
    cy, cg = 40, 24
    x_t = jnp.zeros((1, 16, 16, 3))
    params = model.init(jax.random.key(0), x_t, jnp.zeros((1,), jnp.int32), jnp.zeros((1, 2, 2, cy)),
                        jnp.zeros((1, 2, 2, cg)))["params"]
    d, r, p = cfg.hidden_size, cfg.pixel_factor, cfg.patch_size

    for path, leaf in jax.tree_util.tree_leaves_with_path(params):  # every bias starts at 0 (DiT: all of them)
        if path[-1].key == "bias":
            np.testing.assert_array_equal(leaf, 0.0)
    zero = [params[f"block{i}"]["adaLN_modulation"] for i in range(cfg.depth)]
    zero += [params["final"]["adaLN_modulation"], params["final"]["linear"], params["refine2"]]
    for layer in zero:
        for leaf in jax.tree.leaves(layer):
            np.testing.assert_array_equal(leaf, 0.0)

    for i in range(cfg.depth):
        blk = params[f"block{i}"]
        _uniform_check(blk["qkv"]["kernel"], d, 3 * d)
        _uniform_check(blk["proj"]["kernel"], d, d)
        mlp = int(d * cfg.mlp_ratio)
        _uniform_check(blk["fc1"]["kernel"], d, mlp)
        _uniform_check(blk["fc2"]["kernel"], mlp, d)
    _uniform_check(params["cond_embed"]["kernel"], cy + cg, d, rtol=0.15)

    # the patch-embedding conv: xavier over the flattened (p*p*C_in, D) view, not Flax's conv fans
    kernel = params["patch_embed"]["kernel"]
    c_in = 3 * r * r + cy + cg
    assert kernel.shape == (p, p, c_in, d)
    _uniform_check(kernel, p * p * c_in, d)
    assert np.asarray(kernel).var() > 1.3 * 2.0 / (p * p * c_in + p * p * d)

    for name, fan_in in (("t_embed1", cfg.freq_dim), ("t_embed2", d)):
        w = np.asarray(params[name]["kernel"], np.float64)
        assert w.shape == (fan_in, d)
        assert w.std() == pytest.approx(0.02, rel=0.05) and abs(w.mean()) < 2e-3
