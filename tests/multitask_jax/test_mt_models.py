"""JSCC encoder/decoders, the DiT decoder and the composed MultiTaskSystem (tiny sizes)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from casc_jax import diffusion
from configs.multitask_models_base import dit_preset, model_config
from multitask_jax import channel_budget, jscc
from multitask_jax import dit as dit_lib
from multitask_jax.system import build_multitask


def _randomize(params, scale=0.1, seed=3):
    """Replace every parameter with noise so zero-initialised (adaLN-Zero) layers stop hiding paths."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [scale * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


# ------------------------------------------------------------------------------------------- JSCC


def test_space_to_depth_layout_and_inverse():
    x = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3)
    y = jscc.space_to_depth(x, 2)
    assert y.shape == (2, 2, 3, 12)
    np.testing.assert_array_equal(y[1, 1, 2], x[1, 2:4, 4:6].reshape(-1))
    np.testing.assert_array_equal(jscc.depth_to_space(y, 2), x)


def test_channel_use_count_closed_form():
    # 224 x 224: f1 grid 28 x 28, stride 2 -> 14 x 14; C_out = 3 -> 588 reals = 294 complex symbols
    assert channel_budget.signal_grid((224, 224)) == (14, 14)
    assert channel_budget.channel_uses((224, 224), 3) == 294
    assert channel_budget.overhead_bits(294) == 294 * 64 == 18_816
    assert channel_budget.max_channels_for_budget((224, 224), 20_000) == 3  # the paper's 20 Kbit budget
    assert channel_budget.signal_grid((512, 768)) == (32, 48)
    assert channel_budget.channel_uses((512, 768), 8) == 32 * 48 * 4
    assert channel_budget.signal_grid((500, 375), downsample=4) == (16, 12)  # ceil(ceil(500 / 8) / 4), ceil(47 / 4)
    with pytest.raises(ValueError, match="even"):
        channel_budget.channel_uses((8, 8), 1)


def _np_cross_entropy(logits, labels, ignore=255):
    logits = np.asarray(logits, np.float64).reshape(-1, logits.shape[-1])
    labels = np.asarray(labels).reshape(-1)
    keep = labels != ignore
    logits, labels = logits[keep], labels[keep]
    m = logits.max(-1)
    logz = np.log(np.exp(logits - m[:, None]).sum(-1)) + m
    return np.mean(logz - logits[np.arange(labels.size), labels])


def test_segmentation_loss_ignores_255_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 6, 21)).astype(np.float32) * 3
    labels = rng.integers(0, 21, size=(2, 5, 6))
    labels[rng.random(labels.shape) < 0.3] = 255
    loss = jscc.segmentation_loss(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(float(loss), _np_cross_entropy(logits, labels), rtol=1e-5)
    # the logits of ignored pixels do not matter
    noisy = np.where((labels == 255)[..., None], logits + 100 * rng.normal(size=logits.shape), logits)
    np.testing.assert_allclose(float(jscc.segmentation_loss(jnp.asarray(noisy), jnp.asarray(labels))), float(loss))
    assert float(jscc.segmentation_loss(jnp.asarray(logits), jnp.full(labels.shape, 255))) == 0.0
    with pytest.raises(ValueError, match="do not match"):
        jscc.segmentation_loss(jnp.asarray(logits), jnp.asarray(labels[:, :4]))


def _conv(x, p, stride=1):
    return jax.lax.conv_general_dilated(
        x, p["kernel"], (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    ) + p["bias"]


def _group_norm(x, p, groups, eps=1e-6):
    b, h, w, c = x.shape
    g = x.reshape(b, h, w, groups, c // groups)
    mu, var = g.mean(axis=(1, 2, 4), keepdims=True), g.var(axis=(1, 2, 4), keepdims=True)
    return ((g - mu) / jnp.sqrt(var + eps)).reshape(x.shape) * p["scale"] + p["bias"]


def test_receiver_kb_feature_selection():
    kb = jscc.ReceiverKB(hidden=8)
    y = jax.random.normal(jax.random.key(0), (2, 4, 4, 4))
    params = _randomize(kb.init(jax.random.key(1), y, "reconstruction"))
    g_r, g_s = kb.apply(params, y, "reconstruction"), kb.apply(params, y, "segmentation")
    p = params["params"]
    # Table I: stem conv, then two residual blocks of one conv each, x + conv(swish(GN(x))), 8 groups of 1
    block = lambda x, q: x + _conv(jax.nn.swish(_group_norm(x, q["norm"], 8)), q["conv"])  # noqa: E731
    r1 = block(_conv(y, p["stem"]), p["res1"])
    r2 = block(r1, p["res2"])
    np.testing.assert_allclose(g_s, r1, rtol=1e-4, atol=1e-4)  # segmentation: first block only
    np.testing.assert_allclose(g_r, r1 + r2, rtol=1e-4, atol=1e-4)  # reconstruction: both blocks
    grads = jax.grad(lambda q: jnp.sum(kb.apply(q, y, "segmentation") ** 2))(params)
    assert all(not bool(jnp.any(g != 0)) for g in jax.tree.leaves(grads["params"]["res2"]))
    assert any(bool(jnp.any(g != 0)) for g in jax.tree.leaves(grads["params"]["res1"]))


def _conv_kernels(params):
    """{'3x3': n, '1x1': m}: the conv kernels (4-D params named 'kernel') of a param tree, by size."""
    shapes = [leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(params)
              if path[-1].key == "kernel" and leaf.ndim == 4]
    return {f"{k}x{k}": sum(s[0] == s[1] == k for s in shapes) for k in (3, 1)}


def _num_params(params):
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))


def test_table1_layer_counts_and_paper_shapes():
    """The paper preset against Table I: JSCC encoder 3 conv layers (kernel 3, hidden 128), receiver KB 3,
    segmentation decoder 1 (kernel 3) plus the text's 1x1 classifier; shapes and parameter counts in closed
    form at 224 x 224 (C' = 96, C_out = 3). Shapes only (jax.eval_shape): nothing is computed."""
    system = build_multitask(dict(model_config("paper"), jscc=dict(hidden=128, channels=3, downsample=2)))
    params = jax.eval_shape(system.init, jax.random.key(0))
    enc, rkb, seg = params["encoder"], params["receiver_kb"], params["seg_decoder"]
    assert _conv_kernels(enc) == {"3x3": 3, "1x1": 1}  # the 1x1 is the residual block's projection shortcut
    assert _conv_kernels(rkb) == {"3x3": 3, "1x1": 0}
    assert _conv_kernels(seg) == {"3x3": 1, "1x1": 1}
    assert all(leaf.shape[:2] == (3, 3) for leaf in jax.tree.leaves(rkb) if leaf.ndim == 4)
    assert system.seg_decoder.dropout == 0.1 and system.seg_decoder.num_classes == 21

    c_in, h, c_out, k = 8 * 8 * 3 + 96, 128, 3, 21  # space-to-depth(I, 8) ++ f_R
    gn = lambda c: 2 * c  # noqa: E731  (scale, bias)
    conv = lambda kk, a, b: kk * kk * a * b + b  # noqa: E731
    want_enc = gn(c_in) + conv(3, c_in, h) + gn(h) + conv(3, h, h) + conv(1, c_in, h) + gn(h) + conv(3, h, c_out)
    want_rkb = conv(3, c_out, h) + 2 * (gn(h) + conv(3, h, h))
    want_seg = conv(3, c_out + h, h) + gn(h) + conv(1, h, k)
    assert (_num_params(enc), _num_params(rkb), _num_params(seg)) == (want_enc, want_rkb, want_seg)

    image = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    x = jax.eval_shape(functools.partial(system.transmit, task="segmentation"), params, image)
    assert x.shape == (2, 14, 14, 3)
    g = jax.eval_shape(functools.partial(system.receiver_features, task="reconstruction"), params, x)
    assert g.shape == (2, 14, 14, 128)
    assert jax.eval_shape(system.segment, params, x).shape == (2, 224, 224, 21)


def test_jscc_encoder_power_and_shape():
    enc = jscc.JSCCEncoder(channels=4, hidden=16)
    image = jax.random.uniform(jax.random.key(0), (3, 32, 48, 3), minval=-1, maxval=1)
    f = jax.random.normal(jax.random.key(1), (3, 4, 6, 5))
    x, _ = enc.init_with_output(jax.random.key(2), image, f)
    assert x.shape == (3, 2, 3, 4)
    power = np.sum(np.asarray(x, np.float64).reshape(3, -1) ** 2, axis=1) / (x[0].size / 2)
    np.testing.assert_allclose(power, 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="grid"):
        enc.init(jax.random.key(2), image, f[:, :3])


def test_segmentation_decoder_shape_and_dropout():
    dec = jscc.SegmentationDecoder(hidden=8, num_classes=21)
    y, g = jnp.ones((2, 2, 3, 4)), jnp.ones((2, 2, 3, 8))
    params = dec.init(jax.random.key(0), y, g, (32, 48))
    logits = dec.apply(params, y, g, (32, 48))
    assert logits.shape == (2, 32, 48, 21)
    a = dec.apply(params, y, g, (32, 48), train=True, rngs={"dropout": jax.random.key(1)})
    b = dec.apply(params, y, g, (32, 48), train=True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(a, b)


# -------------------------------------------------------------------------------------------- DiT


def test_sincos_pos_embed_closed_form():
    emb = dit_lib.sincos_pos_embed_2d(8, 3, 4)
    assert emb.shape == (12, 8)
    row, col = 2, 3  # token index 2 * 4 + 3
    omega = np.array([1.0, 1.0 / 100.0])  # 10000^(-k / 2), k = 0, 1
    # DiT's order: the first half encodes the column, the second the row (test_dit_reference.py)
    ref = np.concatenate([np.sin(col * omega), np.cos(col * omega), np.sin(row * omega), np.cos(row * omega)])
    np.testing.assert_allclose(emb[11], ref, rtol=1e-6)


def test_dit_block_is_identity_at_init_and_model_output_zero():
    block = dit_lib.DiTBlock(num_heads=2)
    x = jax.random.normal(jax.random.key(0), (2, 5, 16))
    c = jax.random.normal(jax.random.key(1), (2, 16))
    out, _ = block.init_with_output(jax.random.key(2), x, c)
    np.testing.assert_array_equal(out, x)  # adaLN-Zero: all gates start at 0

    cfg = dit_lib.DiTConfig(**dit_preset("tiny"))
    model = dit_lib.DiT(cfg)
    x_t = jax.random.normal(jax.random.key(3), (2, 16, 24, 3))
    t = jnp.array([0, 5], jnp.int32)
    y, g = jax.random.normal(jax.random.key(4), (2, 1, 2, 4)), jax.random.normal(jax.random.key(5), (2, 1, 2, 6))
    out, params = jax.jit(model.init_with_output)(jax.random.key(6), x_t, t, y, g)
    assert out.shape == x_t.shape
    np.testing.assert_array_equal(out, 0.0)  # zero final linear, identity refine block
    # once trained (random weights) the output depends on the condition y and on t
    params = _randomize(params)
    apply = jax.jit(model.apply)
    a = apply(params, x_t, t, y, g)
    assert not np.allclose(a, apply(params, x_t, t, y + 1.0, g), atol=1e-4)
    assert not np.allclose(a, apply(params, x_t, t + 1, y, g), atol=1e-4)
    with pytest.raises(ValueError, match="multiple"):
        model.apply(params, x_t[:, :12], t, y, g)


def test_dit_presets():
    paper = dit_lib.DiTConfig(**dit_preset("paper"))
    assert (paper.depth, paper.hidden_size, paper.patch_size, paper.num_heads) == (28, 1152, 2, 16)  # DiT-XL/2
    assert dit_preset("small", depth=3)["depth"] == 3
    with pytest.raises(ValueError, match="paper"):
        dit_preset("huge")
    with pytest.raises(ValueError, match="unknown DiT field"):
        dit_preset("tiny", width=3)


def test_eps_from_x0_inverts_predict_x0():
    schedule = diffusion.make_schedule("linear", 50, 1e-4, 0.02)
    x0 = jax.random.normal(jax.random.key(0), (3, 4, 4, 3))
    noise = jax.random.normal(jax.random.key(1), x0.shape)
    t = jnp.array([0, 20, 49])
    x_t = diffusion.q_sample(schedule, x0, t, noise)
    np.testing.assert_allclose(dit_lib.eps_from_x0(schedule, x_t, t, x0), noise, rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------------------------------ system


@functools.cache
def _system():
    system = build_multitask(model_config("tiny"))
    return system, jax.jit(system.init)(jax.random.key(0))


def test_system_num_channel_uses_matches_signal():
    system, params = _system()
    image = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), minval=-1, maxval=1)
    x = jax.jit(system.transmit, static_argnums=2)(params, image, "segmentation")
    assert x.shape == (2,) + system.signal_shape == (2, 2, 2, 4)
    assert system.num_channel_uses == x[0].size // 2 == 8
    assert system.overhead_bits() == 8 * 64
    np.testing.assert_allclose(jnp.sum(x.reshape(2, -1) ** 2, axis=1) / 8, 1.0, rtol=1e-5)


def test_system_forward_both_tasks_and_losses():
    system, params = _system()
    params = dict(params, dit=_randomize(params["dit"], 0.05))
    image = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), minval=-1, maxval=1)
    key = jax.random.key(2)
    logits = jax.jit(lambda p, x, k: system(p, x, "segmentation", k, 10.0))(params, image, key)
    assert logits.shape == (2, 32, 32, 21)
    run = jax.jit(lambda p, x, k, snr: system(p, x, "reconstruction", k, snr, dict(name="ddim", steps=2)))
    recon = run(params, image, key, jnp.array([0.0, 10.0]))
    assert recon.shape == image.shape and bool(jnp.all(jnp.isfinite(recon)))
    labels = jnp.asarray(np.random.default_rng(0).integers(0, 21, (2, 32, 32)))
    seg_grads = jax.jit(jax.grad(system.seg_loss))(params, image, labels, key, 10.0)
    rec_loss, rec_grads = jax.jit(jax.value_and_grad(system.recon_loss))(params, image, key, 10.0)
    nonzero = lambda tree: any(bool(jnp.any(g != 0)) for g in jax.tree.leaves(tree))
    for part in ("swin", "encoder", "receiver_kb"):  # end to end through the channel
        assert nonzero(seg_grads[part]) and nonzero(rec_grads[part])
    assert nonzero(seg_grads["seg_decoder"]) and not nonzero(seg_grads["dit"])
    assert nonzero(rec_grads["dit"]) and not nonzero(rec_grads["seg_decoder"])
    # segmentation never reads f1's projection; reconstruction does
    assert not nonzero(seg_grads["selection"]["proj1"]) and nonzero(rec_grads["selection"]["proj1"])

    # recon_loss is L_R (eq. 5): the image MSE of the DiT's x0 prediction at the key's t and noise
    k_ch, k_t, k_eps, _ = jax.random.split(key, 4)

    @jax.jit
    def x0_pred(p):
        y = system.channel(k_ch, system.transmit(p, image, "reconstruction"), 10.0)
        t = jax.random.randint(k_t, (2,), 0, system.schedule.num_timesteps)
        x_t = diffusion.q_sample(system.schedule, image, t, jax.random.normal(k_eps, image.shape))
        return system.x0_fn(p, y)(x_t, t)

    pred = np.asarray(x0_pred(params), np.float64)
    np.testing.assert_allclose(float(rec_loss), np.mean((pred - np.asarray(image, np.float64)) ** 2), rtol=1e-5)


def test_unknown_task_and_bad_shapes():
    system, params = _system()
    image = jnp.zeros((1, 32, 32, 3))
    with pytest.raises(ValueError, match=r"'reconstruction', 'segmentation'"):
        system.transmit(params, image, "detection")
    with pytest.raises(ValueError, match="reconstruction"):
        system.receive(params, jnp.zeros((1, 2, 2, 4)), "classify")
    with pytest.raises(ValueError, match="expected images"):
        system.transmit(params, jnp.zeros((1, 24, 32, 3)), "segmentation")
    with pytest.raises(ValueError, match="multiple of 8"):
        build_multitask(dict(model_config("tiny"), image_size=(30, 32)))
    with pytest.raises(ValueError, match="preset"):
        model_config("huge")
