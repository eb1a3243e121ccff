"""What a denoiser network predicts: the noise eps, the clean data x0, or the velocity v.

With ``x_t = alpha_t x0 + sigma_t eps`` (``alpha_t = sqrt(abar_t)``, ``sigma_t = sqrt(1 - abar_t)``):

    eps = eps;   x0 = (x_t - sigma_t eps) / alpha_t;   v = alpha_t eps - sigma_t x0   (Salimans & Ho, 2022)

The samplers take a noise prediction, so a network trained on another target is read through
:func:`eps_from_prediction`; :func:`prediction_target` gives its training target. Strongly conditioned
restoration (CASC's receiver, a DiT decoder fed the received signal) often learns faster on x0 or v: at high
noise an eps network must output almost x_t itself, while x0 and v stay well scaled at every t.
"""

from __future__ import annotations

import jax

from casc_jax.diffusion.schedules import Schedule, alpha_sigma

PREDICTIONS = ("eps", "x0", "v")


def check_prediction(kind: str) -> str:
    """`kind` if it is one of :data:`PREDICTIONS`, else ValueError naming the choices."""
    if kind not in PREDICTIONS:
        raise ValueError(f"unknown prediction target {kind!r}; choose one of {', '.join(PREDICTIONS)}")
    return kind


def _coefficients(schedule: Schedule, t: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(alpha_t, sigma_t)`` shaped to broadcast over ``x`` (B, ...); ``t`` int or real, (B,)."""
    alpha, sigma = alpha_sigma(schedule, t)
    shape = (-1,) + (1,) * (x.ndim - 1)
    return alpha.reshape(shape).astype(x.dtype), sigma.reshape(shape).astype(x.dtype)


def eps_from_prediction(schedule: Schedule, x_t: jax.Array, t: jax.Array, pred: jax.Array, kind: str) -> jax.Array:
    """The noise ``eps`` implied by a network output `pred` of the given `kind` at ``(x_t, t)``.

    x0: ``eps = (x_t - alpha_t x0) / sigma_t`` (defined for every t, since beta_0 > 0);
    v: ``eps = sigma_t x_t + alpha_t v`` (alpha_t^2 + sigma_t^2 = 1).
    """
    if check_prediction(kind) == "eps":
        return pred
    alpha, sigma = _coefficients(schedule, t, x_t)
    if kind == "x0":
        return (x_t - alpha * pred) / sigma
    return sigma * x_t + alpha * pred


def prediction_target(schedule: Schedule, x0: jax.Array, noise: jax.Array, t: jax.Array, kind: str) -> jax.Array:
    """What a `kind` network should output for ``x_t = q_sample(x0, t, noise)``: eps, x0 or v."""
    if check_prediction(kind) == "eps":
        return noise
    if kind == "x0":
        return x0
    alpha, sigma = _coefficients(schedule, t, x0)
    return alpha * noise - sigma * x0

