"""Swin source KB: windows, the shifted-window mask, output shapes, and the task feature selection."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from multitask_jax import swin


def test_window_partition_reverse_round_trip_and_layout():
    x = jax.random.normal(jax.random.key(0), (2, 14, 21, 5))
    win = swin.window_partition(x, 7)
    assert win.shape == (2 * 2 * 3, 7, 7, 5)
    # window k of sample b is the block (row r, col c) with k = b * 6 + r * 3 + c (row-major)
    np.testing.assert_array_equal(win[1 * 6 + 1 * 3 + 2], x[1, 7:14, 14:21])
    np.testing.assert_array_equal(swin.window_reverse(win, 7, 14, 21), x)
    with pytest.raises(ValueError, match="multiple of the window"):
        swin.window_partition(x[:, :13], 7)


def test_relative_position_index_matches_offsets():
    w = 3
    idx = swin.relative_position_index(w)
    coords = list(itertools.product(range(w), range(w)))
    for (qi, q), (ki, k) in itertools.product(enumerate(coords), enumerate(coords)):
        dy, dx = q[0] - k[0] + w - 1, q[1] - k[1] + w - 1
        assert idx[qi, ki] == dy * (2 * w - 1) + dx
    assert idx.max() == (2 * w - 1) ** 2 - 1


def _reference_mask(h, w, window, shift):
    """Brute force: two tokens of one (shifted) window may attend iff both are real image tokens and their
    original positions are within one window of each other without wrapping around the image."""
    hp, wp = -(-h // window) * window, -(-w // window) * window
    masks = []
    for r0 in range(0, hp, window):
        for c0 in range(0, wp, window):
            cells = itertools.product(range(window), range(window))
            toks = [((r0 + i + shift) % hp, (c0 + j + shift) % wp) for i, j in cells]
            m = np.zeros((window**2, window**2))
            for a, (ra, ca) in enumerate(toks):
                for b, (rb, cb) in enumerate(toks):
                    real = ra < h and ca < w and rb < h and cb < w
                    near = abs(ra - rb) < window and abs(ca - cb) < window
                    both_pad = not (ra < h and ca < w) and not (rb < h and cb < w)
                    m[a, b] = 0.0 if (real and near) or (both_pad and near) else swin.MASK_VALUE
            masks.append(m)
    return np.stack(masks)


@pytest.mark.parametrize("h, w, window, shift", [(14, 14, 7, 3), (10, 12, 4, 2), (7, 9, 3, 0)])
def test_shifted_window_mask_blocks_cross_region_attention(h, w, window, shift):
    mask = swin.attention_mask(h, w, window, shift)
    np.testing.assert_array_equal(mask, _reference_mask(h, w, window, shift))
    assert mask.min() == swin.MASK_VALUE  # some pairs really are blocked
    assert swin.attention_mask(14, 14, 7, 0) is None  # unshifted and unpadded: nothing to mask


def test_shifted_block_does_not_mix_wrapped_tokens():
    """The cyclic shift puts original corner tokens into one window; the mask keeps them apart."""
    block = swin.SwinBlock(num_heads=2, window=4, shift=2)
    x = jax.random.normal(jax.random.key(1), (1, 8, 8, 8))
    params = jax.tree.map(lambda p: 3 * p, block.init(jax.random.key(2), x))
    y0 = block.apply(params, x)
    y1 = block.apply(params, x.at[0, 0, 0, 0].add(10.0))  # top-left token, one channel
    changed = np.asarray(jnp.max(jnp.abs(y0 - y1), axis=-1)[0] > 0)
    # After the shift by 2, original rows/cols {6, 7, 0, 1} form the last window; only the wrapped part
    # {0, 1} x {0, 1} is the top-left token's region. (7, 7) shares its window but must not see it.
    expected = np.zeros((8, 8), bool)
    expected[:2, :2] = True
    np.testing.assert_array_equal(changed, expected)


def test_padding_never_changes_real_tokens():
    """A 9x10 grid is padded to 12x12 inside the block; real tokens attend only to the real tokens of their
    window. Reference: float64 numpy attention over each window's real tokens alone."""
    block = swin.SwinBlock(num_heads=1, window=4, shift=0)
    x = jax.random.normal(jax.random.key(3), (1, 9, 10, 4))
    params = block.init(jax.random.key(4), x)
    y = block.apply(params, x)
    assert y.shape == x.shape
    # reference: attention restricted to real tokens of each window, computed by cropping each window
    b = params["params"]

    def ln(a, p):
        a = (a - a.mean(-1, keepdims=True)) / np.sqrt(a.var(-1, keepdims=True) + 1e-5)
        return a * p["scale"] + p["bias"]

    xn = np.asarray(ln(np.asarray(x[0], np.float64), b["norm1"]))
    att = b["attn"]
    table = np.asarray(att["relative_position_bias_table"])
    idx = swin.relative_position_index(4)
    out = np.zeros((9, 10, 4))
    for r0, c0 in itertools.product(range(0, 12, 4), range(0, 12, 4)):
        pos = [(r, c) for r in range(r0, r0 + 4) for c in range(c0, c0 + 4)]
        real = [i for i, (r, c) in enumerate(pos) if r < 9 and c < 10]
        toks = np.stack([xn[pos[i]] for i in real])
        qkv = toks @ np.asarray(att["qkv"]["kernel"]) + np.asarray(att["qkv"]["bias"])
        q, k, v = np.split(qkv, 3, axis=-1)
        logits = q @ k.T / 2.0 + table[idx[np.ix_(real, real)], 0]
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        o = (p @ v) @ np.asarray(att["proj"]["kernel"]) + np.asarray(att["proj"]["bias"])
        for i, val in zip(real, o, strict=True):
            out[pos[i]] = val
    h1 = np.asarray(x[0], np.float64) + out
    hn = np.asarray(ln(h1, b["norm2"]))
    import scipy.special  # noqa: F401  (erf for exact gelu)

    g = hn @ np.asarray(b["fc1"]["kernel"]) + np.asarray(b["fc1"]["bias"])
    g = 0.5 * g * (1 + scipy.special.erf(g / np.sqrt(2)))
    ref = h1 + g @ np.asarray(b["fc2"]["kernel"]) + np.asarray(b["fc2"]["bias"])
    np.testing.assert_allclose(np.asarray(y[0]), ref, rtol=2e-4, atol=2e-4)


def test_feature_grids_closed_form():
    assert swin.feature_grids(224, 224) == [(28, 28), (14, 14), (7, 7)]
    assert swin.feature_grids(512, 768) == [(64, 96), (32, 48), (16, 24)]
    assert swin.feature_grids(500, 375) == [(63, 47), (32, 24), (16, 12)]


@pytest.mark.parametrize("hw", [(224, 224), (512, 768)])
def test_swin_output_shapes(hw):
    """Tiny width and depth (cheap under eval_shape); channel counts follow 2 * embed * 2^(i-1)."""
    model = swin.SwinFeatureExtractor(embed_dim=8, depths=(2, 2, 2), num_heads=(1, 2, 4))
    x = jax.ShapeDtypeStruct((1, *hw, 3), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), x)
    feats = jax.eval_shape(model.apply, params, x)
    grids = swin.feature_grids(*hw)
    assert [f.shape for f in feats] == [(1, *g, 16 * 2**i) for i, g in enumerate(grids)]
    table = params["params"]["stage1_block0"]["attn"]["relative_position_bias_table"]
    assert table.shape == (13 * 13, 1)


def test_swin_paper_size_shapes_224():
    model = swin.SwinFeatureExtractor()  # patch 4, embed 96, depths (2, 2, 6), heads (3, 6, 12), window 7
    x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), x)
    feats = jax.eval_shape(model.apply, params, x)
    assert [f.shape for f in feats] == [(2, 28, 28, 192), (2, 14, 14, 384), (2, 7, 7, 768)]


def test_swin_runs_on_non_multiple_size():
    model = swin.SwinFeatureExtractor(embed_dim=8, depths=(2, 1, 1), num_heads=(1, 1, 1), window=3)
    x = jax.random.normal(jax.random.key(0), (1, 37, 50, 3))
    feats, _ = jax.jit(model.init_with_output)(jax.random.key(1), x)
    assert [f.shape[1:3] for f in feats] == swin.feature_grids(37, 50)
    assert all(bool(jnp.all(jnp.isfinite(f))) for f in feats)


def test_feature_selection_uses_f1_only_for_reconstruction():
    sel = swin.FeatureSelection(features=4)
    keys = jax.random.split(jax.random.key(0), 3)
    feats = [jax.random.normal(k, (1, 8 // 2**i, 8 // 2**i, 3 * 2**i)) for i, k in enumerate(keys)]
    params = sel.init(jax.random.key(1), feats, "reconstruction")
    for task, f1_used in (("reconstruction", True), ("segmentation", False)):
        grads = jax.grad(lambda fs, task=task: jnp.sum(sel.apply(params, fs, task) ** 2))(feats)
        assert bool(jnp.any(grads[0] != 0)) == f1_used
        assert bool(jnp.any(grads[1] != 0)) and bool(jnp.any(grads[2] != 0))
    # f_R - f_S is exactly the projected f1 (a 1x1 conv, no resize on f1's grid)
    p = params["params"]["proj1"]
    diff = sel.apply(params, feats, "reconstruction") - sel.apply(params, feats, "segmentation")
    np.testing.assert_allclose(diff, feats[0] @ p["kernel"][0, 0] + p["bias"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="reconstruction"):
        sel.apply(params, feats, "detection")
