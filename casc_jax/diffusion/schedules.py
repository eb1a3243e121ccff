"""Discrete DDPM noise schedules and the forward process (CASC eq. 8 to 10).

Notation (Ho et al. 2020, LDM): timesteps are indexed ``t = 0 .. T-1``; ``beta_t`` is the
per-step variance, ``alpha_t = 1 - beta_t`` and ``abar_t = prod_{s <= t} alpha_s``. The forward
marginal is ``q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)``. In the samplers' notation
(DDIM, DPM-Solver) the same marginal is written ``x_t = alpha_t x_0 + sigma_t eps`` with
``alpha_t = sqrt(abar_t)`` and ``sigma_t = sqrt(1 - abar_t)``.

All quantities are computed in float64 numpy and stored as float32 jnp arrays.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np

SCHEDULE_KINDS = ("ldm_linear", "linear")


@flax.struct.dataclass
class Schedule:
    """Precomputed quantities of a discrete diffusion schedule; every field is a float32 array (T,).

    Attributes:
      betas: ``beta_t``.
      alphas_cumprod: ``abar_t = prod_{s<=t} (1 - beta_s)``.
      alphas_cumprod_prev: ``abar_{t-1}`` with ``abar_{-1} = 1``.
      sqrt_alphas_cumprod: ``sqrt(abar_t)`` (the samplers' ``alpha_t``).
      sqrt_one_minus_alphas_cumprod: ``sqrt(1 - abar_t)`` (the samplers' ``sigma_t``).
      posterior_variance: ``beta_tilde_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)``, the variance of
        ``q(x_{t-1} | x_t, x_0)``; zero at ``t = 0``.
      posterior_log_variance_clipped: ``log beta_tilde_t`` with the ``t = 0`` entry replaced by the
        ``t = 1`` one (LDM's clipping, since ``beta_tilde_0 = 0``).
      posterior_mean_coef1: ``beta_t sqrt(abar_{t-1}) / (1 - abar_t)``, the coefficient of ``x_0``.
      posterior_mean_coef2: ``(1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t)``, the coefficient of ``x_t``.
      log_alphas_cumprod: ``log abar_t``, the knots of the continuous-time schedule (:func:`alpha_sigma`).
    """

    betas: jax.Array
    alphas_cumprod: jax.Array
    alphas_cumprod_prev: jax.Array
    sqrt_alphas_cumprod: jax.Array
    sqrt_one_minus_alphas_cumprod: jax.Array
    posterior_variance: jax.Array
    posterior_log_variance_clipped: jax.Array
    posterior_mean_coef1: jax.Array
    posterior_mean_coef2: jax.Array
    log_alphas_cumprod: jax.Array

    @property
    def num_timesteps(self) -> int:
        """T, the number of discrete timesteps (static: read from the array shape)."""
        return int(self.betas.shape[0])


def make_betas(
    kind: str = "ldm_linear",
    num_timesteps: int = 1000,
    beta_start: float = 0.0015,
    beta_end: float = 0.0195,
) -> np.ndarray:
    """The float64 ``beta_t`` of a schedule kind, shape (T,).

    ``'ldm_linear'`` is LDM's "linear" schedule, linear in ``sqrt(beta)``:
    ``beta_t = linspace(sqrt(beta_start), sqrt(beta_end), T)^2``; ``'linear'`` is the plain
    ``linspace(beta_start, beta_end, T)`` of DDPM.
    """
    if kind not in SCHEDULE_KINDS:
        raise ValueError(f"Unknown schedule kind {kind!r}; choose one of {list(SCHEDULE_KINDS)}.")
    if int(num_timesteps) < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}.")
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(
            f"Need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}."
        )
    if kind == "ldm_linear":
        return np.linspace(np.sqrt(beta_start), np.sqrt(beta_end), num_timesteps, dtype=np.float64) ** 2
    return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def make_schedule(
    kind: str = "ldm_linear",
    num_timesteps: int = 1000,
    beta_start: float = 0.0015,
    beta_end: float = 0.0195,
) -> Schedule:
    """Build a :class:`Schedule` (computed in float64, stored float32). See :func:`make_betas`."""
    betas = make_betas(kind, num_timesteps, beta_start, beta_end)
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.append(1.0, abar[:-1])
    post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
    # beta_tilde_0 = 0: LDM clips the log by reusing the t = 1 value (t = 0 never adds noise anyway).
    post_var_clip = np.append(post_var[1], post_var[1:]) if num_timesteps > 1 else np.maximum(post_var, 1e-20)
    f32 = lambda a: jnp.asarray(a, dtype=jnp.float32)
    return Schedule(
        betas=f32(betas),
        alphas_cumprod=f32(abar),
        alphas_cumprod_prev=f32(abar_prev),
        sqrt_alphas_cumprod=f32(np.sqrt(abar)),
        sqrt_one_minus_alphas_cumprod=f32(np.sqrt(1.0 - abar)),
        posterior_variance=f32(post_var),
        posterior_log_variance_clipped=f32(np.log(post_var_clip)),
        posterior_mean_coef1=f32(betas * np.sqrt(abar_prev) / (1.0 - abar)),
        posterior_mean_coef2=f32((1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar)),
        log_alphas_cumprod=f32(np.cumsum(np.log1p(-betas))),
    )


# ----------------------------------------------------------------------------- continuous time
#
# The discrete schedule extends to real t in [0, T-1] as DPM-Solver's "discrete" noise schedule does:
# log abar(t) is the piecewise-linear interpolation of log abar_t between integer timesteps, so
#   alpha(t) = exp(log abar(t) / 2),  sigma(t) = sqrt(1 - abar(t)) = sqrt(-expm1(log abar(t))),
#   lambda(t) = log(alpha(t) / sigma(t)),
# which equal the discrete values at every integer t. lambda(t) is strictly decreasing, and
# t(lambda) is exact: log abar = -log(1 + e^{-2 lambda}), then the inverse of the linear pieces.


def alpha_sigma(schedule: Schedule, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(alpha(t), sigma(t))`` at int or real timesteps ``t`` in ``[0, T-1]`` (any shape), float32.

    Real ``t`` uses the piecewise-linear ``log abar`` above; integer ``t`` gives the discrete values.
    """
    log_abar = log_abar_at(schedule.log_alphas_cumprod, t)
    return jnp.exp(0.5 * log_abar), jnp.sqrt(-jnp.expm1(log_abar))


def log_abar_at(log_abar: jax.Array, t: jax.Array) -> jax.Array:
    """Piecewise-linear interpolation of the knots ``log_abar`` (T,) at int or real ``t`` (any shape)."""
    t = jnp.asarray(t)
    if jnp.issubdtype(t.dtype, jnp.integer):
        return log_abar[t]
    T = log_abar.shape[0]
    t = jnp.clip(t.astype(jnp.float32), 0.0, T - 1.0)
    lo = jnp.clip(jnp.floor(t).astype(jnp.int32), 0, max(T - 2, 0))
    frac = t - lo
    return log_abar[lo] + frac * (log_abar[jnp.minimum(lo + 1, T - 1)] - log_abar[lo])


def lambda_np(log_abar: np.ndarray) -> np.ndarray:
    """``lambda = log(alpha / sigma) = (log abar - log(1 - abar)) / 2`` in float64."""
    log_abar = np.asarray(log_abar, np.float64)
    return 0.5 * (log_abar - np.log(-np.expm1(log_abar)))


def t_of_lambda(log_abar: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Real timesteps with ``lambda(t) = lam`` (float64), the exact inverse of the continuous schedule.

    Args:
      log_abar: the knots ``log abar_t`` (T,); lam: target values within ``[lambda_{T-1}, lambda_0]``.
    """
    log_abar = np.asarray(log_abar, np.float64)
    target = -np.logaddexp(0.0, -2.0 * np.asarray(lam, np.float64))  # log abar of each lambda
    # log abar is decreasing in t; np.interp needs increasing x
    return np.interp(target, log_abar[::-1], np.arange(log_abar.size - 1, -1, -1, dtype=np.float64))


def extract(a: jax.Array, t: jax.Array, x: jax.Array) -> jax.Array:
    """Gather ``a[t]`` and shape it to broadcast against ``x``.

    Args:
      a: a schedule array (T,).
      t: int timesteps, a scalar or (B,).
      x: the array to broadcast against, (B, ...).
    Returns:
      ``a[t]`` as a scalar or as (B, 1, ..., 1), in ``x``'s dtype.
    """
    t = jnp.asarray(t)
    v = a[t].astype(x.dtype)
    if t.ndim == 0:
        return v
    return v.reshape(t.shape + (1,) * (x.ndim - t.ndim))


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """Forward diffusion ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``.

    Args:
      x0: clean data (B, ...); t: int timesteps (B,); noise: ``eps ~ N(0, I)`` shaped like ``x0``.
    Returns:
      x_t, shaped like ``x0``.
    """
    return (
        extract(schedule.sqrt_alphas_cumprod, t, x0) * x0
        + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * noise
    )


def predict_x0(schedule: Schedule, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """Invert the forward marginal: ``x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``.

    Args:
      x_t: (B, ...); t: int timesteps, scalar or (B,); eps: predicted noise shaped like ``x_t``.
    """
    return (x_t - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) / extract(
        schedule.sqrt_alphas_cumprod, t, x_t
    )


def epsilon_loss(eps_pred: jax.Array, noise: jax.Array) -> jax.Array:
    """Per-example epsilon-prediction loss ``||eps - eps_theta(x_t, t)||^2`` (CASC eq. 10); the same
    squared error of an x0 or v network against ``prediction.prediction_target``.

    Returns the mean squared error over all non-batch axes, shape (B,); take ``.mean()`` for the
    batch loss (equal to the mean over all elements).
    """
    if eps_pred.shape != noise.shape:
        raise ValueError(f"eps_pred shape {eps_pred.shape} does not match noise shape {noise.shape}.")
    err = jnp.square(eps_pred.astype(jnp.float32) - noise.astype(jnp.float32))
    return jnp.mean(err.reshape(err.shape[0], -1), axis=-1)
