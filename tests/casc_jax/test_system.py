"""The CASC composition: shapes, the scanned sampler, the stage-2 gradients, the CAN at init."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from casc_jax import diffusion
from casc_jax.casc.system import build_casc
from configs import casc_base


def _tiny_config(cr="1/48", use_can=True, timesteps=8):
    config = casc_base.base_config(cr=cr, use_can=use_can, preset="smoke")
    config.unet.update(ch=16, head_dim=16)
    config.diffusion.num_timesteps = timesteps
    return config


@functools.cache
def _model(cr="1/48", use_can=True):
    model = build_casc(_tiny_config(cr, use_can))
    return model, model.init(jax.random.key(0))


def _randomize(params, scale=0.05, seed=7):
    """Replace every parameter with noise, so zero-initialised layers no longer hide gradients."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


def _images(batch=2, seed=1):
    return jax.random.uniform(jax.random.key(seed), (batch, 32, 32, 3), minval=-1, maxval=1)


@pytest.mark.parametrize(("cr", "channels"), [("1/48", 2), ("1/96", 1)])
def test_shapes_for_both_crs(cr, channels):
    model, params = _model(cr)
    x = _images()
    c = model.transmit(params, x)
    assert c.shape == (2, 8, 8, channels)
    assert model.num_channel_uses == 64 * channels // 2
    power = jnp.mean(jnp.sum(c.reshape(2, -1) ** 2, axis=1)) / model.num_channel_uses
    np.testing.assert_allclose(float(power), 1.0, rtol=1e-5)
    c_hat = model.channel(jax.random.key(2), c, jnp.array([5.0, 20.0]))
    assert c_hat.shape == c.shape
    x_hat = model.receive(params, c_hat, jax.random.key(3), {"name": "ddpm"})
    assert x_hat.shape == x.shape
    assert bool(jnp.all(jnp.isfinite(x_hat)))


def test_wrong_image_shape_is_rejected():
    model, params = _model()
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 32, 32, 3\)"):
        model.transmit(params, jnp.zeros((2, 28, 28, 3)))


def test_scanned_sampler_equals_step_by_step_reference():
    model, params = _model()
    params = _randomize(params)
    c_hat = model.transmit(params, _images())
    eps_fn = model.denoiser_fn(params, c_hat)
    shape = (2,) + model.latent_shape
    key = jax.random.key(11)
    scanned = jax.jit(lambda k: diffusion.sample(eps_fn, model.schedule, shape, k))(key)
    looped = diffusion.sample_loop(eps_fn, model.schedule, shape, key)
    np.testing.assert_allclose(np.asarray(scanned), np.asarray(looped), rtol=1e-4, atol=1e-4)


def test_receiver_jaxpr_holds_one_scan_of_length_T():
    model, params = _model()
    c_hat = jnp.zeros((2,) + model.condition_shape)
    jaxpr = jax.make_jaxpr(lambda p, c, k: model.receive(p, c, k, {"name": "ddpm"}))(
        params, c_hat, jax.random.key(0)
    )
    scans = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
    assert len(scans) == 1
    assert scans[0].params["length"] == model.schedule.num_timesteps


def test_stage2_gradients_reach_f_can_unet_but_not_autoencoder():
    model, params = _model()
    params = _randomize(params)
    grads = jax.grad(model.denoiser_loss)(params, _images(4), jax.random.key(5), jnp.full((4,), 10.0))
    norms = {k: float(sum(jnp.sum(jnp.abs(g)) for g in jax.tree.leaves(v))) for k, v in grads.items()}
    assert norms["autoencoder"] == 0.0
    for part in ("cond_encoder", "can", "unet"):
        assert norms[part] > 0.0, part


def test_condition_aware_unet_equals_static_at_init():
    """Zero-initialised generators: CASC's eps equals the same U-Net without dynamic weights."""
    model, params = _model()
    unet_params = _randomize(params["unet"])  # a non-trivial static U-Net
    params = dict(params, unet=unet_params)
    c_hat = model.transmit(params, _images())
    z_t = jax.random.normal(jax.random.key(4), (2,) + model.latent_shape)
    t = jnp.array([3, 6])
    dynamic = model.dynamic_weights(params, c_hat)
    assert set(dynamic) == {"conv_in", "mid_attn", "conv_out"}
    aware = model.eps(params, z_t, t, c_hat, dynamic)
    static = model.eps(params, z_t, t, c_hat, {})
    np.testing.assert_allclose(np.asarray(aware), np.asarray(static), atol=1e-6)
    assert float(jnp.std(static)) > 1e-3


def test_no_can_ablation_has_no_generator():
    model, params = _model(use_can=False)
    assert model.can is None and params["can"] == {}
    assert model.dynamic_weights(params, jnp.zeros((1,) + model.condition_shape)) == {}


def test_bfloat16_denoiser_stays_close_to_float32():
    model, params = _model()
    params = _randomize(params)
    c_hat = model.transmit(params, _images())
    key = jax.random.key(9)
    z32 = model.denoise(params, c_hat, key, {"name": "ddpm"})
    z16 = model.denoise(params, c_hat, key, {"name": "ddpm", "dtype": "bfloat16"})
    assert z16.dtype == jnp.float32
    rel = float(jnp.linalg.norm(z16 - z32) / jnp.linalg.norm(z32))
    assert rel < 0.05


def test_decoder_in_chunks_equals_the_whole_batch():
    """receiver.decode_batch splits the decoder's batch (an uneven rest as one more call): the same images."""
    import dataclasses

    model, params = _model()
    z = jax.random.normal(jax.random.key(3), (5,) + model.latent_shape)
    whole = jax.jit(dataclasses.replace(model, decode_batch=0).decode)(params, z)
    for b in (1, 2, 5, 8):
        chunked = jax.jit(dataclasses.replace(model, decode_batch=b).decode)(params, z)
        assert chunked.shape == (5,) + model.image_shape
        np.testing.assert_allclose(np.asarray(chunked), np.asarray(whole), atol=1e-5)
    config = _tiny_config()
    assert config.receiver.decode_batch is None and build_casc(config).decode_batch == 16  # unset: 16 on CPU
    config.receiver.decode_batch = 0
    assert build_casc(config).decode_batch == 0
    config.receiver.decode_batch = -1
    with pytest.raises(ValueError, match="decode_batch must be 0"):
        build_casc(config)
