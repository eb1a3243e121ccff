"""The baselines: DeepJSCC (shapes, CR accounting, power, losses) and DiffSC (conditioning, gradients, scan)."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from casc_jax import channel as ch
from casc_jax.baselines import DiffSC, build_deepjscc, build_diffsc
from casc_jax.system import build_casc
from configs import casc_base


def _config(cr="1/48", size=32, timesteps=6):
    c = ml_collections.ConfigDict()
    c.cr = cr
    c.data = ml_collections.ConfigDict(dict(image_size=size))
    c.channel = ml_collections.ConfigDict(dict(kind="awgn", equalizer="zf"))
    c.deepjscc = ml_collections.ConfigDict(dict(filters=(16, 32, 32, 32), kernel_size=5))
    c.diffsc = ml_collections.ConfigDict(
        dict(
            unet=ml_collections.ConfigDict(
                dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(2,), head_dim=16, dropout=0.0)
            ),
            clip_x0=1.0,
        )
    )
    c.diffusion = ml_collections.ConfigDict(
        dict(schedule="linear", num_timesteps=timesteps, beta_start=1e-4, beta_end=0.02)
    )
    return c


@functools.lru_cache(maxsize=None)
def _deepjscc(cr="1/48"):
    model = build_deepjscc(_config(cr))
    return model, model.init(jax.random.key(0))


@functools.lru_cache(maxsize=None)
def _diffsc(cr="1/48"):
    model = build_diffsc(_config(cr))
    return model, model.init(jax.random.key(0))


def _images(batch=2, seed=1, size=32):
    return jax.random.uniform(jax.random.key(seed), (batch, size, size, 3), minval=-1, maxval=1)


def _randomize(tree, scale=0.05, seed=7):
    """Add noise to every parameter, so zero-initialised layers no longer hide a path."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(treedef, [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


# ------------------------------------------------------------------------------------- DeepJSCC


@pytest.mark.parametrize(("cr", "channels"), [("1/48", 2), ("1/96", 1)])
def test_deepjscc_shapes_and_symbol_count_match_casc(cr, channels):
    model, params = _deepjscc(cr)
    x = _images()
    z = model.transmit(params, x)
    assert z.shape == (2, 8, 8, channels)
    # d = 2 n CR reals: 128 at 1/48 and 64 at 1/96 for 32 x 32 x 3 images.
    d = 2 * 32 * 32 * 3 / int(cr.split("/")[1])
    assert z[0].size == d
    assert model.num_channel_uses == ch.num_channel_uses(ch.parse_ratio(cr), (32, 32, 3)) == d / 2
    assert ch.compression_ratio(z[0].size, (32, 32, 3)) == ch.parse_ratio(cr)
    casc = build_casc(casc_base.base_config(cr=cr, preset="smoke"))
    assert model.num_channel_uses == casc.num_channel_uses
    y = model.channel(jax.random.key(2), z, jnp.array([5.0, 20.0]))
    assert y.shape == z.shape
    x_hat = model.receive(params, y)
    assert x_hat.shape == x.shape
    assert float(jnp.min(x_hat)) >= -1.0 and float(jnp.max(x_hat)) <= 1.0


def test_deepjscc_channel_input_has_unit_power_per_complex_symbol():
    model, params = _deepjscc()
    x = _images(batch=3) * jnp.array([1.0, 0.1, 0.5])[:, None, None, None]
    z = np.asarray(model.transmit(params, x), np.float64).reshape(3, -1)
    power = np.sum(z**2, axis=1) / (z.shape[1] / 2)  # per sample: sum |s_k|^2 / k
    np.testing.assert_allclose(power, 1.0, rtol=1e-5)


def test_deepjscc_parameter_count_is_the_papers_architecture():
    """5x5 convs 3->16->32->32->32->c, transposed convs c->32->32->32->16->3, one PReLU slope per layer."""
    model, params = _deepjscc("1/48")
    c, k = 2, 25
    enc = [(3, 16), (16, 32), (32, 32), (32, 32), (32, c)]
    dec = [(c, 32), (32, 32), (32, 32), (32, 16), (16, 3)]
    expected = sum(k * i * o + o for i, o in enc) + 5 + sum(k * i * o + o for i, o in dec) + 4
    assert sum(p.size for p in jax.tree.leaves(params)) == expected
    assert params["encoder"]["conv0"]["kernel"].shape == (5, 5, 3, 16)
    assert params["decoder"]["tconv4"]["kernel"].shape == (5, 5, 16, 3)


def test_deepjscc_mse_loss_matches_numpy():
    model, params = _deepjscc()
    params = _randomize(params, scale=0.1)
    x, key, snr = _images(), jax.random.key(5), jnp.array([5.0, 15.0])
    x_hat = np.asarray(model(params, x, key, snr), np.float64)
    x01, x_hat01 = (np.asarray(x, np.float64) + 1) / 2, (x_hat + 1) / 2  # the paper's [0, 1] pixels
    expected = np.mean((x_hat01 - x01) ** 2)
    np.testing.assert_allclose(float(model.loss(params, x, key, snr, kind="mse")), expected, rtol=1e-5)


def test_deepjscc_lpips_loss_uses_the_given_function():
    model, params = _deepjscc()
    x, key = _images(), jax.random.key(5)
    seen = []

    def stand_in(a, b):  # a differentiable stand-in for LPIPS: (B,) mean absolute difference
        seen.append((a.shape, b.shape))
        return jnp.mean(jnp.abs(a - b), axis=(1, 2, 3))

    x_hat = np.asarray(model(params, x, key, 10.0), np.float64)
    expected = np.mean(np.abs(x_hat - np.asarray(x, np.float64)))
    got = model.loss(params, x, key, 10.0, kind="lpips", lpips_fn=stand_in)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)
    assert seen == [((2, 32, 32, 3), (2, 32, 32, 3))]
    grads = jax.grad(lambda p: model.loss(p, x, key, 10.0, kind="lpips", lpips_fn=stand_in))(params)
    assert float(jnp.abs(grads["encoder"]["conv0"]["kernel"]).sum()) > 0


def test_deepjscc_bad_inputs_are_rejected():
    model, params = _deepjscc()
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 32, 32, 3\)"):
        model.transmit(params, jnp.zeros((2, 28, 28, 3)))
    with pytest.raises(ValueError, match="needs lpips_fn"):
        model.loss(params, _images(), jax.random.key(0), 10.0, kind="lpips")
    with pytest.raises(ValueError, match="unknown DeepJSCC loss"):
        model.loss(params, _images(), jax.random.key(0), 10.0, kind="l1")
    with pytest.raises(ValueError, match="multiple of 4"):
        build_deepjscc(_config(size=30))
    with pytest.raises(ValueError, match="nearest valid ratios"):
        build_deepjscc(_config(cr="1/100"))
    bad = _config()
    bad.deepjscc.filters = (16, 32)
    with pytest.raises(ValueError, match="4 hidden widths"):
        build_deepjscc(bad)


# --------------------------------------------------------------------------------------- DiffSC


def test_diffsc_shapes_and_cr_follow_deepjscc():
    for cr in ("1/48", "1/96"):
        model, params = _diffsc(cr)
        assert model.num_channel_uses == ch.num_channel_uses(ch.parse_ratio(cr), (32, 32, 3))
    x = _images()
    x_hat = model(params, x, jax.random.key(3), 10.0, {"name": "ddim", "steps": 3})
    assert x_hat.shape == x.shape
    assert float(jnp.min(x_hat)) >= -1.0 and float(jnp.max(x_hat)) <= 1.0


def test_diffsc_denoiser_reads_the_deepjscc_output():
    model, params = _diffsc()
    params = dict(params, unet=_randomize(params["unet"]))  # zero-initialised convs would hide the path
    x = _images()
    y = model.channel(jax.random.key(2), model.transmit(params, x), 20.0)
    x_t = jax.random.normal(jax.random.key(4), x.shape)
    t = jnp.array([3, 1], jnp.int32)
    eps_fn = model.denoiser_fn(params, y)
    # Reference: the U-Net applied by hand to concat[x_t, D_jscc(y)].
    x_jscc = model.deepjscc.receive(params["deepjscc"], y)
    ref = model.unet.apply({"params": params["unet"]}, x_t, t, x_jscc)
    np.testing.assert_allclose(np.asarray(eps_fn(x_t, t)), np.asarray(ref), rtol=1e-5, atol=1e-6)
    # A different received signal changes the DeepJSCC output and hence the prediction.
    y2 = model.channel(jax.random.key(9), model.transmit(params, _images(seed=8)), 0.0)
    other = model.denoiser_fn(params, y2)(x_t, t)
    assert float(jnp.max(jnp.abs(model.condition(params, y2) - x_jscc))) > 1e-3
    assert float(jnp.max(jnp.abs(other - ref))) > 1e-4


def test_diffsc_gradients_reach_only_the_unet():
    model, params = _diffsc()
    params = {"deepjscc": _randomize(params["deepjscc"]), "unet": _randomize(params["unet"])}
    x = _images()
    loss, grads = jax.value_and_grad(model.denoiser_loss)(params, x, jax.random.key(6), jnp.array([5.0, 20.0]))
    assert np.isfinite(float(loss))
    for g in jax.tree.leaves(grads["deepjscc"]):
        assert float(jnp.max(jnp.abs(g))) == 0.0
    unet_norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads["unet"])]
    assert min(unet_norms) > 0.0


def test_diffsc_loss_at_init_is_the_noise_energy():
    """The zero-initialised output conv predicts eps_hat = 0, so L_simple = mean(eps^2), E = 1."""
    model, params = _diffsc()
    x = _images(batch=4)
    loss = float(model.denoiser_loss(params, x, jax.random.key(1), 10.0))
    # 4 * 3072 squared normals: mean 1, standard deviation sqrt(2 / 12288) = 0.013.
    assert abs(loss - 1.0) < 0.06


def test_diffsc_receiver_jaxpr_holds_one_scan_of_length_T():
    model, params = _diffsc()
    y = jnp.zeros((2,) + model.deepjscc.latent_shape)
    jaxpr = jax.make_jaxpr(lambda p, y, k: model.receive(p, y, k))(params, y, jax.random.key(0))
    scans = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
    assert len(scans) == 1
    assert scans[0].params["length"] == model.schedule.num_timesteps


def test_diffsc_init_builds_on_given_deepjscc_params():
    jscc, jscc_params = _deepjscc()
    model = build_diffsc(_config())
    params = model.init(jax.random.key(3), jscc_params)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params["deepjscc"], jscc_params))
    assert isinstance(model, DiffSC) and set(params) == {"deepjscc", "unet"}
