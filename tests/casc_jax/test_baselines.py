"""The baselines: DeepJSCC (shapes, CR accounting, power, losses) and DiffSC (conditioning, gradients, scan)."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from casc_jax import channel as ch
from casc_jax.casc.baselines import DiffSC, build_deepjscc, build_diffsc
from casc_jax.casc.system import build_casc
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
                dict(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), head_dim=8, dropout=0.0)
            ),
            clip_x0=1.0,
        )
    )
    c.diffusion = ml_collections.ConfigDict(
        dict(schedule="linear", num_timesteps=timesteps, beta_start=1e-4, beta_end=0.02)
    )
    return c


@functools.cache
def _deepjscc(cr="1/48"):
    model = build_deepjscc(_config(cr))
    return model, jax.jit(model.init)(jax.random.key(0))


@functools.cache
def _diffsc(cr="1/48"):
    """DiffSC built on the (cached) DeepJSCC parameters, as the trainer does."""
    model = build_diffsc(_config(cr))
    return model, jax.jit(model.init)(jax.random.key(0), _deepjscc(cr)[1])


def _images(batch=2, seed=1, size=32):
    return jax.random.uniform(jax.random.key(seed), (batch, size, size, 3), minval=-1, maxval=1)


def _randomize(tree, scale=0.05, seed=7):
    """Add noise to every parameter, so zero-initialised layers no longer hide a path."""

    def noisy(tree):
        leaves, treedef = jax.tree.flatten(tree)
        keys = jax.random.split(jax.random.key(seed), len(leaves))
        return jax.tree.unflatten(treedef, [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])

    return jax.jit(noisy)(tree)


# ------------------------------------------------------------------------------------- DeepJSCC


@pytest.mark.parametrize(("cr", "channels"), [("1/48", 2), ("1/96", 1)])
def test_deepjscc_shapes_and_symbol_count_match_casc(cr, channels):
    model, params = _deepjscc(cr)
    x = _images()

    @jax.jit
    def run(p, x, key, snr):
        z = model.transmit(p, x)
        y = model.channel(key, z, snr)
        return z, y, model.receive(p, y)

    z, y, x_hat = run(params, x, jax.random.key(2), jnp.array([5.0, 20.0]))
    assert z.shape == y.shape == (2, 8, 8, channels)
    # d = 2 n CR reals: 128 at 1/48 and 64 at 1/96 for 32 x 32 x 3 images.
    d = 2 * 32 * 32 * 3 / int(cr.split("/")[1])
    assert z[0].size == d
    assert model.num_channel_uses == ch.num_channel_uses(ch.parse_ratio(cr), (32, 32, 3)) == d / 2
    assert ch.compression_ratio(z[0].size, (32, 32, 3)) == ch.parse_ratio(cr)
    casc = build_casc(casc_base.base_config(cr=cr, preset="smoke"))
    assert model.num_channel_uses == casc.num_channel_uses
    assert x_hat.shape == x.shape
    assert float(jnp.min(x_hat)) >= -1.0 and float(jnp.max(x_hat)) <= 1.0


def test_deepjscc_channel_input_has_unit_power_per_complex_symbol():
    model, params = _deepjscc()
    x = _images(batch=3) * jnp.array([1.0, 0.1, 0.5])[:, None, None, None]
    z = np.asarray(jax.jit(model.transmit)(params, x), np.float64).reshape(3, -1)
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
    x_hat, loss = jax.jit(lambda p: (model(p, x, key, snr), model.loss(p, x, key, snr, kind="mse")))(params)
    x01 = (np.asarray(x, np.float64) + 1) / 2  # the paper's [0, 1] pixels
    x_hat01 = (np.asarray(x_hat, np.float64) + 1) / 2
    expected = np.mean((x_hat01 - x01) ** 2)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_deepjscc_lpips_loss_uses_the_given_function():
    model, params = _deepjscc()
    x, key = _images(), jax.random.key(5)
    seen = []

    def stand_in(a, b):  # a differentiable stand-in for LPIPS: (B,) mean absolute difference
        seen.append((a.shape, b.shape))
        return jnp.mean(jnp.abs(a - b), axis=(1, 2, 3))

    loss_fn = jax.value_and_grad(lambda p: model.loss(p, x, key, 10.0, kind="lpips", lpips_fn=stand_in))
    x_hat, (got, grads) = jax.jit(lambda p: (model(p, x, key, 10.0), loss_fn(p)))(params)
    expected = np.mean(np.abs(np.asarray(x_hat, np.float64) - np.asarray(x, np.float64)))
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)
    assert seen == [((2, 32, 32, 3), (2, 32, 32, 3))]
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
        assert build_diffsc(_config(cr)).num_channel_uses == ch.num_channel_uses(ch.parse_ratio(cr), (32, 32, 3))
    model, params = _diffsc()
    x = _images()
    run = jax.jit(lambda p, x, k: model(p, x, k, 10.0, {"name": "ddim", "steps": 3}))
    x_hat = run(params, x, jax.random.key(3))
    assert x_hat.shape == x.shape
    assert float(jnp.min(x_hat)) >= -1.0 and float(jnp.max(x_hat)) <= 1.0


def test_diffsc_denoiser_reads_the_deepjscc_output():
    model, params = _diffsc()
    params = dict(params, unet=_randomize(params["unet"]))  # zero-initialised convs would hide the path
    x_t = jax.random.normal(jax.random.key(4), (2, 32, 32, 3))
    t = jnp.array([3, 1], jnp.int32)

    @jax.jit
    def run(p, x, key, snr):
        y = model.channel(key, model.transmit(p, x), snr)
        x_jscc = model.deepjscc.receive(p["deepjscc"], y)
        # Reference: the U-Net applied by hand to concat[x_t, D_jscc(y)].
        ref = model.unet.apply({"params": p["unet"]}, x_t, t, x_jscc)
        return model.denoiser_fn(p, y)(x_t, t), ref, x_jscc

    eps, ref, x_jscc = run(params, _images(), jax.random.key(2), 20.0)
    np.testing.assert_allclose(np.asarray(eps), np.asarray(ref), rtol=1e-5, atol=1e-6)
    # A different received signal changes the DeepJSCC output and hence the prediction.
    eps2, _, x_jscc2 = run(params, _images(seed=8), jax.random.key(9), 0.0)
    assert float(jnp.max(jnp.abs(x_jscc2 - x_jscc))) > 1e-3
    assert float(jnp.max(jnp.abs(eps2 - eps))) > 1e-4


def test_diffsc_gradients_reach_only_the_unet():
    model, params = _diffsc()
    params = {"deepjscc": _randomize(params["deepjscc"]), "unet": _randomize(params["unet"])}
    x = _images()
    loss, grads = jax.jit(jax.value_and_grad(model.denoiser_loss))(
        params, x, jax.random.key(6), jnp.array([5.0, 20.0])
    )
    assert np.isfinite(float(loss))
    for g in jax.tree.leaves(grads["deepjscc"]):
        assert float(jnp.max(jnp.abs(g))) == 0.0
    unet_norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads["unet"])]
    assert min(unet_norms) > 0.0


def test_diffsc_loss_at_init_is_the_noise_energy():
    """The zero-initialised output conv predicts eps_hat = 0, so L_simple = mean(eps^2), E = 1."""
    model, params = _diffsc()
    x = _images(batch=4)
    loss = float(jax.jit(model.denoiser_loss)(params, x, jax.random.key(1), 10.0))
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
    _, jscc_params = _deepjscc()
    model, params = _diffsc()
    assert isinstance(model, DiffSC) and set(params) == {"deepjscc", "unet"}
    same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params["deepjscc"], jscc_params)
    assert all(jax.tree.leaves(same))
    fresh = jax.eval_shape(model.init, jax.random.key(1))
    assert jax.tree.structure(fresh) == jax.tree.structure(params)
