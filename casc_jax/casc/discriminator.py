"""PatchGAN discriminator and the hinge / adaptive-weight terms of LDM's VQ first-stage loss.

Deviation from LDM (stated): BatchNorm is replaced by GroupNorm so the discriminator stays a pure
function with no running statistics; the structure (4x4 convs, LeakyReLU 0.2, stride-2 layers,
one logit per patch) is Isola et al.'s PatchGAN as used by Taming Transformers and LDM.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from casc_jax.nn.layers import group_norm


class PatchGAN(nn.Module):
    """X (B, H, W, 3) -> patch logits (B, h, w, 1)."""

    features: int = 64
    num_layers: int = 3

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.normal(0.02)
        h = nn.leaky_relu(nn.Conv(self.features, (4, 4), strides=2, kernel_init=init)(x), 0.2)
        for n in range(1, self.num_layers + 1):
            stride = 2 if n < self.num_layers else 1
            width = self.features * min(2**n, 8)
            h = nn.Conv(width, (4, 4), strides=stride, use_bias=False, kernel_init=init)(h)
            h = nn.leaky_relu(group_norm(width)(h), 0.2)
        return nn.Conv(1, (4, 4), kernel_init=init)(h)


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    """0.5 (E[relu(1 - D(x))] + E[relu(1 + D(x_hat))])."""
    return 0.5 * (jnp.mean(nn.relu(1.0 - logits_real)) + jnp.mean(nn.relu(1.0 + logits_fake)))


def adaptive_weight(grad_nll: jax.Array, grad_gan: jax.Array, scale: float) -> jax.Array:
    """LDM's lambda = ||grad_L nll|| / (||grad_L g|| + 1e-4), clipped to [0, 1e4], times `scale`.

    Both gradients are taken w.r.t. the decoder's last layer L.
    """
    weight = jnp.linalg.norm(grad_nll) / (jnp.linalg.norm(grad_gan) + 1e-4)
    return jax.lax.stop_gradient(jnp.clip(weight, 0.0, 1e4) * scale)
