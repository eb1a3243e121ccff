"""Stage 1's one-backward gradient equals LDM's two-pass reference (VQ straight-through, PatchGAN, hinge)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from casc_jax.casc.discriminator import PatchGAN, adaptive_weight, hinge_d_loss
from casc_jax.casc.system import build_casc
from casc_jax.casc.train import initial_states, stage1_grads
from casc_jax.metrics.lpips import LPIPS
from configs import casc_base


def _setup():
    c = casc_base.base_config(preset="smoke")
    c.autoencoder.update(ch=8, num_codes=32)
    c.train.stage1.update(lpips_weight=0.0, disc_start=0, disc_layers=1, disc_weight=0.75)
    model = build_casc(c)
    s1 = initial_states(model, c, jax.random.key(0))["stage1"]
    x = jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (4, 32, 32, 3)), jnp.float32)
    return c.train.stage1, model.autoencoder, s1.params, s1.extra["disc_params"], x


def _two_pass_reference(ae, cfg, disc, params, d_params, x, key, active):
    """The former step: full backward of nll + codebook, a second full backward of g_loss, lambda from
    their conv_out kernel slices, grads = g_nll + lambda g_gan."""

    def forward(p):
        x_hat, codebook_loss, _ = ae.apply({"params": p}, x, train=True, rngs={"dropout": key})
        return x_hat, codebook_loss

    (x_hat, codebook_loss), pullback = jax.vjp(forward, params)
    nll, d_nll = jax.value_and_grad(lambda xh: jnp.mean(jnp.abs(x - xh)))(x_hat)
    (grads,) = pullback((d_nll, jnp.asarray(cfg.codebook_weight, codebook_loss.dtype)))
    g_loss, d_gan = jax.value_and_grad(lambda xh: -jnp.mean(disc.apply({"params": d_params}, xh)))(x_hat)
    (grads_gan,) = pullback((d_gan, jnp.zeros_like(codebook_loss)))
    last = lambda g: g["decoder"]["conv_out"]["kernel"]  # noqa: E731
    weight = adaptive_weight(last(grads), last(grads_gan), cfg.disc_weight) * active
    grads = jax.tree.map(lambda a, b: a + weight * b, grads, grads_gan)
    return grads, x_hat, weight, nll, g_loss


def _hinge_d_grads(disc, d_params, x, x_hat):
    loss = lambda p: hinge_d_loss(disc.apply({"params": p}, x), disc.apply({"params": p}, x_hat))  # noqa: E731
    return jax.value_and_grad(loss)(d_params)


@pytest.mark.parametrize("active", [1.0, 0.0])  # discriminator on, and before disc_start
def test_one_backward_equals_two_pass_reference(active):
    active = jnp.float32(active)
    cfg, ae, params, d_params, x = _setup()
    disc, key = PatchGAN(num_layers=cfg.disc_layers), jax.random.key(3)
    run = lambda p, dp: stage1_grads(ae, cfg, disc, LPIPS(cfg.lpips_net), p, dp, x, key, None, active)  # noqa: E731
    grads, x_hat, metrics = jax.jit(run)(params, d_params)
    reference = jax.jit(lambda p, dp: _two_pass_reference(ae, cfg, disc, p, dp, x, key, active))
    ref_grads, ref_x_hat, ref_weight, ref_nll, ref_g = reference(params, d_params)
    np.testing.assert_allclose(metrics["d_weight"], ref_weight, rtol=1e-5)
    assert (float(metrics["d_weight"]) > 0) == bool(active)
    np.testing.assert_allclose(metrics["nll"], ref_nll, rtol=1e-6)
    np.testing.assert_allclose(metrics["g_loss"], ref_g, rtol=1e-6)
    np.testing.assert_allclose(x_hat, ref_x_hat, rtol=1e-5, atol=1e-6)
    assert jax.tree.structure(grads) == jax.tree.structure(ref_grads)
    # float32: the sum of two pullbacks vs one pullback of the sum. Leaves whose exact gradient is zero
    # (biases before a GroupNorm) hold rounding noise, so the floor is relative to the largest gradient.
    floor = 1e-6 * max(float(jnp.max(jnp.abs(b))) for b in jax.tree.leaves(ref_grads))
    for (path, a), b in zip(jax.tree.leaves_with_path(grads), jax.tree.leaves(ref_grads), strict=True):
        atol = max(1e-4 * float(jnp.max(jnp.abs(b))), floor)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=atol, err_msg=jax.tree_util.keystr(path))
    # The encoder is reached through the straight-through quantiser.
    assert float(jnp.max(jnp.abs(grads["encoder"]["conv_in"]["kernel"]))) > 0
    # The discriminator's hinge loss sees the same x_hat, hence the same gradients.
    d_new, d_ref = _hinge_d_grads(disc, d_params, x, x_hat), _hinge_d_grads(disc, d_params, x, ref_x_hat)
    np.testing.assert_allclose(d_new[0], d_ref[0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(d_new[1]), jax.tree.leaves(d_ref[1])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
