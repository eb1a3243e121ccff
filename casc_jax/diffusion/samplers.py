"""Reverse-chain samplers: DDPM ancestral, DDIM and DPM-Solver++(2M).

A sampler takes a denoiser ``eps_fn(x_t, t) -> eps_hat`` (closed over parameters and condition;
``x_t`` (B, ...), ``t`` int32 (B,) holding the discrete timestep ``0..T-1``) and a
:class:`~casc_jax.diffusion.schedules.Schedule`. It knows nothing about the model.

Conventions:
- Discrete timestep ``t`` has ``alpha_t = sqrt(abar_t)``, ``sigma_t = sqrt(1 - abar_t)`` and
  ``lambda_t = log(alpha_t / sigma_t)`` (half the log-SNR). The clean data is timestep ``-1`` with
  ``abar = 1`` (``alpha = 1``, ``sigma = 0``, ``lambda = +inf``): every sampler ends there.
- Each per-step function (:func:`ddpm_step`, :func:`ddim_step`, :func:`dpmpp_2m_step`) is the only
  home of its update rule; :func:`sample` runs them in one ``jax.lax.scan`` and :func:`sample_loop`
  runs the same scan body in a Python loop (debugging, per-step dispatch baseline).
- Keys: ``key_T, key_chain = jax.random.split(key)``; ``x_T ~ N(0, I)`` is drawn from ``key_T``
  (unless given) and step ``i`` (0-based, in chain order) uses ``jax.random.fold_in(key_chain, i)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from casc_jax.diffusion.schedules import Schedule, extract, predict_x0

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]

SAMPLERS = ("ddpm", "ddim", "dpmpp_2m")


def sampler_names() -> tuple[str, ...]:
    """The names accepted by :func:`sample`'s ``sampler`` argument."""
    return SAMPLERS


# ----------------------------------------------------------------------------- helpers


def _eps(eps_fn: EpsFn, x: jax.Array, t: jax.Array) -> jax.Array:
    """Call the denoiser with the scalar timestep broadcast to (B,); result in ``x``'s dtype."""
    tb = jnp.full((x.shape[0],), t, dtype=jnp.int32)
    return eps_fn(x, tb).astype(x.dtype)


def _clip(x0: jax.Array, clip_x0: float | None) -> jax.Array:
    return x0 if clip_x0 is None else jnp.clip(x0, -clip_x0, clip_x0)


def _abar(schedule: Schedule, t: jax.Array) -> jax.Array:
    """``abar_t`` for a scalar int timestep, with ``abar_{-1} = 1`` (clean data)."""
    t = jnp.asarray(t, jnp.int32)
    return jnp.where(t >= 0, schedule.alphas_cumprod[jnp.maximum(t, 0)], 1.0)


def _alpha_sigma(schedule: Schedule, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(alpha_t, sigma_t) = (sqrt(abar_t), sqrt(1 - abar_t))``; ``(1, 0)`` at ``t = -1``."""
    t = jnp.asarray(t, jnp.int32)
    ti = jnp.maximum(t, 0)
    alpha = jnp.where(t >= 0, schedule.sqrt_alphas_cumprod[ti], 1.0)
    sigma = jnp.where(t >= 0, schedule.sqrt_one_minus_alphas_cumprod[ti], 0.0)
    return alpha, sigma


SPACINGS = ("uniform", "logsnr")


def make_timesteps(
    num_timesteps: int,
    steps: int | Sequence[int] | None,
    spacing: str = "uniform",
    alphas_cumprod: np.ndarray | jax.Array | None = None,
) -> np.ndarray:
    """The descending timestep sub-sequence a DDIM / DPM-Solver chain evaluates the denoiser at.

    Args:
      num_timesteps: T.
      steps: ``None`` (all T), a count S, or an explicit sequence of distinct timesteps in
        ``[0, T-1]`` (any order; ``spacing`` is then ignored).
      spacing: for a count S: ``'uniform'`` is DDIM's uniform spacing, the round-down linspace
        ``t_i = floor(i (T-1) / (S-1))``, i = 0..S-1 (it always spans 0 and T-1); ``'logsnr'`` is
        uniform in ``lambda_t = log(alpha_t / sigma_t)`` between ``lambda_{T-1}`` and ``lambda_0``
        (DPM-Solver's "logSNR" skip type), rounded to the nearest discrete timestep and made distinct.
      alphas_cumprod: ``abar`` (T,), concrete (not traced); needed only for ``'logsnr'``.
    Returns:
      int32 array (S,), strictly decreasing.
    """
    T = int(num_timesteps)
    if spacing not in SPACINGS:
        raise ValueError(f"Unknown timestep spacing {spacing!r}; choose one of {list(SPACINGS)}.")
    if steps is None:
        steps = T
    if isinstance(steps, (int, np.integer)):
        S = int(steps)
        if not 1 <= S <= T:
            raise ValueError(f"steps must be in [1, T={T}], got {S}.")
        if S == 1:
            return np.array([T - 1], dtype=np.int32)
        if spacing == "uniform":
            ts = (np.arange(S, dtype=np.int64) * (T - 1)) // (S - 1)
            return ts[::-1].astype(np.int32)
        return _logsnr_timesteps(T, S, alphas_cumprod)
    ts = np.asarray(list(steps))
    if ts.ndim != 1 or ts.size == 0 or not np.issubdtype(ts.dtype, np.integer):
        raise ValueError(f"steps must be an int or a non-empty sequence of int timesteps, got {steps!r}.")
    if ts.min() < 0 or ts.max() > T - 1:
        raise ValueError(f"explicit timesteps must lie in [0, {T - 1}], got min {ts.min()}, max {ts.max()}.")
    if np.unique(ts).size != ts.size:
        raise ValueError(f"explicit timesteps must be distinct, got {list(ts)}.")
    return np.sort(ts)[::-1].astype(np.int32)


def _logsnr_timesteps(T: int, S: int, alphas_cumprod) -> np.ndarray:
    """S distinct descending timesteps, uniform in ``lambda_t`` (see :func:`make_timesteps`)."""
    if alphas_cumprod is None:
        raise ValueError("spacing='logsnr' needs the schedule's alphas_cumprod.")
    try:
        abar = np.asarray(alphas_cumprod, dtype=np.float64)
    except jax.errors.TracerArrayConversionError as e:
        raise ValueError(
            "spacing='logsnr' needs a concrete schedule: close over the Schedule instead of passing it "
            "as a traced argument of jax.jit."
        ) from e
    lam = 0.5 * np.log(abar / (1.0 - abar))  # decreasing in t
    target = np.linspace(lam[T - 1], lam[0], S)  # increasing lambda = decreasing t
    ts = np.array([int(np.argmin(np.abs(lam - v))) for v in target], dtype=np.int64)
    for i in range(1, S):  # strictly decreasing, top down ...
        ts[i] = min(ts[i], ts[i - 1] - 1)
    ts[S - 1] = max(ts[S - 1], 0)
    for i in range(S - 2, -1, -1):  # ... and non-negative, bottom up (S <= T keeps ts[0] <= T-1)
        ts[i] = max(ts[i], ts[i + 1] + 1)
    return ts.astype(np.int32)


# ----------------------------------------------------------------------------- per-step updates


def ddpm_step(
    eps_fn: EpsFn,
    schedule: Schedule,
    x_t: jax.Array,
    t: jax.Array | int,
    key: jax.Array,
    clip_x0: float | None = None,
) -> jax.Array:
    """One DDPM ancestral step ``x_t -> x_{t-1} ~ N(mu_tilde(x_t, x0_hat), beta_tilde_t I)`` (Ho et al.).

    ``x0_hat = (x_t - sigma_t eps_hat) / alpha_t``; ``mu_tilde = coef1_t x0_hat + coef2_t x_t``;
    the variance is LDM's "fixed_small" ``beta_tilde_t`` (``exp`` of the clipped log-variance).
    No noise is added at ``t = 0``, whose mean is ``x0_hat`` itself.

    Args:
      x_t: (B, ...); t: scalar int timestep, the same for the batch (may be traced);
      key: PRNG key for this step's noise; clip_x0: clip ``x0_hat`` to ``[-c, c]`` or ``None``.
    Returns:
      x_{t-1}, shaped like ``x_t``.
    """
    t = jnp.asarray(t, jnp.int32)
    eps = _eps(eps_fn, x_t, t)
    x0 = _clip(predict_x0(schedule, x_t, t, eps), clip_x0)
    # mu_tilde = coef1_t x0_hat + coef2_t x_t
    mean = extract(schedule.posterior_mean_coef1, t, x_t) * x0
    mean = mean + extract(schedule.posterior_mean_coef2, t, x_t) * x_t
    std = jnp.exp(0.5 * extract(schedule.posterior_log_variance_clipped, t, x_t))
    z = jax.random.normal(key, x_t.shape, x_t.dtype)
    return mean + jnp.where(t > 0, std, 0.0).astype(x_t.dtype) * z


def ddim_step(
    eps_fn: EpsFn,
    schedule: Schedule,
    x_t: jax.Array,
    t: jax.Array | int,
    t_prev: jax.Array | int,
    key: jax.Array,
    eta: float | jax.Array = 0.0,
    clip_x0: float | None = None,
) -> jax.Array:
    """One DDIM step ``x_t -> x_{t_prev}`` (Song et al. 2021, eq. 12), ``t_prev = -1`` for clean data.

    With ``a_t = abar_t`` and ``a_p = abar_{t_prev}``:
    ``x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)``,
    ``sigma = eta sqrt((1 - a_p) / (1 - a_t)) sqrt(1 - a_t / a_p)``,
    ``x_{t_prev} = sqrt(a_p) x0_hat + sqrt(1 - a_p - sigma^2) eps + sigma z``.
    ``eta = 0`` is the deterministic DDIM; ``eta = 1`` with consecutive steps is DDPM's ``beta_tilde``.
    """
    t = jnp.asarray(t, jnp.int32)
    eps = _eps(eps_fn, x_t, t)
    a_t = _abar(schedule, t)
    a_p = _abar(schedule, t_prev)
    x0 = _clip((x_t - jnp.sqrt(1.0 - a_t) * eps) / jnp.sqrt(a_t), clip_x0)
    sigma = eta * jnp.sqrt((1.0 - a_p) / (1.0 - a_t)) * jnp.sqrt(jnp.maximum(1.0 - a_t / a_p, 0.0))
    dir_xt = jnp.sqrt(jnp.maximum(1.0 - a_p - sigma**2, 0.0)) * eps
    z = jax.random.normal(key, x_t.shape, x_t.dtype)
    return (jnp.sqrt(a_p) * x0 + dir_xt + sigma * z).astype(x_t.dtype)


def dpmpp_2m_step(
    eps_fn: EpsFn,
    schedule: Schedule,
    x_s: jax.Array,
    s: jax.Array | int,
    t: jax.Array | int,
    x0_prev: jax.Array,
    s_prev: jax.Array | int,
    second_order: bool | jax.Array,
    clip_x0: float | None = None,
) -> tuple[jax.Array, jax.Array]:
    """One DPM-Solver++(2M) step ``x_s -> x_t`` (Lu et al. 2022, Algorithm 2), ``t = -1`` for clean data.

    Data prediction ``D_s = x_theta(x_s, s) = (x_s - sigma_s eps_hat) / alpha_s``; with
    ``h = lambda_t - lambda_s``:
    - first order (DPM-Solver++1 = DDIM): ``x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D_s``;
    - second order (multistep): ``h_prev = lambda_s - lambda_{s_prev}``, ``r = h_prev / h``,
      ``D = (1 + 1/(2r)) D_s - 1/(2r) D_{s_prev}`` replaces ``D_s`` in the same update.

    Args:
      x_s: (B, ...) state at timestep ``s`` (scalar int); t: target timestep (scalar, ``-1`` = clean).
      x0_prev: the history ``D_{s_prev}`` shaped like ``x_s`` (ignored unless ``second_order``).
      s_prev: the timestep of the history (scalar int).
      second_order: bool (may be traced): use the 2M correction (``jnp.where``, no Python branch).
    Returns:
      ``(x_t, D_s)``: the new state and this step's data prediction (the next step's history).
    """
    s = jnp.asarray(s, jnp.int32)
    eps = _eps(eps_fn, x_s, s)
    alpha_s, sigma_s = _alpha_sigma(schedule, s)
    alpha_t, sigma_t = _alpha_sigma(schedule, t)
    alpha_p, sigma_p = _alpha_sigma(schedule, s_prev)
    d_s = _clip((x_s - sigma_s * eps) / alpha_s, clip_x0)

    # lambda = log(alpha / sigma); e^{-h} = e^{lambda_s - lambda_t} = (alpha_s sigma_t) / (sigma_s alpha_t),
    # written as a ratio so that the clean end point (sigma_t = 0, lambda_t = inf) gives e^{-h} = 0.
    exp_neg_h = (alpha_s * sigma_t) / (sigma_s * alpha_t)
    lam = lambda a, sg: jnp.log(a) - jnp.log(jnp.where(sg > 0, sg, 1.0))  # finite placeholder at clean
    lam_s, lam_t, lam_p = lam(alpha_s, sigma_s), lam(alpha_t, sigma_t), lam(alpha_p, sigma_p)
    second_order = jnp.asarray(second_order) & (sigma_t > 0) & (sigma_p > 0)
    h = lam_t - lam_s
    h_prev = jnp.where(second_order, lam_s - lam_p, 1.0)
    half_inv_r = jnp.where(second_order, h / (2.0 * h_prev), 0.0)  # 1/(2r) = h / (2 h_prev)
    d = d_s + half_inv_r.astype(x_s.dtype) * (d_s - x0_prev)  # (1 + 1/(2r)) D_s - 1/(2r) D_{s_prev}

    x_t = (sigma_t / sigma_s) * x_s - alpha_t * (exp_neg_h - 1.0) * d
    return x_t.astype(x_s.dtype), d_s


# ----------------------------------------------------------------------------- whole chains


def _check_sampler(sampler: str, steps, eta, spacing: str, num_timesteps: int) -> None:
    if sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler {sampler!r}; choose one of {list(SAMPLERS)}.")
    if sampler == "ddpm" and steps is not None and not (
        isinstance(steps, (int, np.integer)) and int(steps) == num_timesteps
    ):
        raise ValueError(
            f"The 'ddpm' sampler runs all T={num_timesteps} ancestral steps; got steps={steps!r}. "
            "Use steps=None, or sampler='ddim' / 'dpmpp_2m' for fewer steps."
        )
    if spacing not in SPACINGS:
        raise ValueError(f"Unknown timestep spacing {spacing!r}; choose one of {list(SPACINGS)}.")
    if sampler != "ddim" and isinstance(eta, (int, float)) and eta != 0:
        raise ValueError(f"eta={eta} only applies to sampler='ddim' (got sampler={sampler!r}).")


def _build_chain(eps_fn, schedule, shape, key, sampler, steps, eta, clip_x0, x_T, spacing):
    """The scan pieces shared by :func:`sample` and :func:`sample_loop`: (carry0, body, xs, final)."""
    T = schedule.num_timesteps
    _check_sampler(sampler, steps, eta, spacing, T)
    key_T, key_chain = jax.random.split(key)
    if x_T is None:
        x_T = jax.random.normal(key_T, tuple(shape), jnp.float32)
    elif tuple(x_T.shape) != tuple(shape):
        raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape={tuple(shape)} was requested.")

    if sampler == "ddpm":
        ts = np.arange(T - 1, -1, -1, dtype=np.int32)
        xs = (jnp.arange(T, dtype=jnp.int32), jnp.asarray(ts))

        def body(x, xs_i):
            i, t = xs_i
            return ddpm_step(eps_fn, schedule, x, t, jax.random.fold_in(key_chain, i), clip_x0), None

        return x_T, body, xs, lambda x: x

    # descending, S entries: the denoiser is evaluated S times
    ts = make_timesteps(T, steps, spacing, schedule.alphas_cumprod)
    ts_next = np.append(ts[1:], -1).astype(np.int32)  # the last step goes to the clean data
    if sampler == "ddim":
        xs = (jnp.arange(ts.size, dtype=jnp.int32), jnp.asarray(ts), jnp.asarray(ts_next))

        def body(x, xs_i):
            i, t, t_prev = xs_i
            key_i = jax.random.fold_in(key_chain, i)
            return ddim_step(eps_fn, schedule, x, t, t_prev, key_i, eta, clip_x0), None

        return x_T, body, xs, lambda x: x

    # dpmpp_2m: the first step is first order (no history yet), every middle step second order, and the
    # final step first order ("lower_order_final"). Lu et al.'s reference lowers the final order only
    # below 10 steps, but it stops at t = 0; this chain goes on to the clean data (sigma = 0, h = inf),
    # where only the first-order update is defined (x_0 = D_s), as in diffusers' final_sigmas_type="zero".
    k = np.arange(ts.size)
    second = (k > 0) & (k < ts.size - 1)
    xs = (jnp.asarray(ts), jnp.asarray(ts_next), jnp.asarray(second))

    def body(carry, xs_i):
        x, x0_prev, s_prev = carry  # fixed-size multistep history: D_{s_prev} and s_prev
        s, t, second_order = xs_i
        x_t, d_s = dpmpp_2m_step(eps_fn, schedule, x, s, t, x0_prev, s_prev, second_order, clip_x0)
        return (x_t, d_s, s), None

    carry0 = (x_T, jnp.zeros_like(x_T), jnp.asarray(ts[0], jnp.int32))
    return carry0, body, xs, lambda c: c[0]


def sample(
    eps_fn: EpsFn,
    schedule: Schedule,
    shape: Sequence[int],
    key: jax.Array,
    *,
    sampler: str = "ddpm",
    steps: int | Sequence[int] | None = None,
    eta: float = 0.0,
    clip_x0: float | None = None,
    x_T: jax.Array | None = None,
    spacing: str = "uniform",
) -> jax.Array:
    """Run the whole reverse chain ``x_T -> x_0`` as one ``jax.lax.scan``.

    Jit-able: ``sampler``, ``steps``, ``spacing``, ``shape`` and ``clip_x0`` are static (close over
    them or mark them static); ``schedule``, ``key``, ``x_T`` and ``eta`` may be traced.

    Args:
      eps_fn: denoiser ``(x_t (B, ...), t int32 (B,)) -> eps_hat (B, ...)``.
      schedule: the discrete schedule (T timesteps).
      shape: ``(B, ...)`` of the samples.
      key: PRNG key (see the module docstring for how it is split).
      sampler: one of :func:`sampler_names`: ``'ddpm'`` (T ancestral steps), ``'ddim'``, ``'dpmpp_2m'``.
      steps: ``None`` (T), a step count for DDIM / DPM-Solver++ (uniform spacing, see
        :func:`make_timesteps`) or an explicit sequence of timesteps. ``'ddpm'`` accepts only None or T.
      eta: DDIM's stochasticity (0 = deterministic).
      clip_x0: clip the predicted ``x_0`` to ``[-c, c]`` in every step, or ``None``.
      x_T: the starting noise (default: ``N(0, I)`` drawn from ``key``).
      spacing: ``'uniform'`` (default) or ``'logsnr'`` timesteps for a step count (see
        :func:`make_timesteps`; ``'logsnr'`` needs a concrete, closed-over schedule). DPM-Solver++ at
        few steps is far more accurate with ``'logsnr'`` on LDM's schedule.
    Returns:
      x_0, shape ``shape``, float32 (``x_T``'s dtype when given).
    """
    carry0, body, xs, final = _build_chain(
        eps_fn, schedule, shape, key, sampler, steps, eta, clip_x0, x_T, spacing
    )
    carry, _ = jax.lax.scan(body, carry0, xs)
    return final(carry)


def sample_loop(
    eps_fn: EpsFn,
    schedule: Schedule,
    shape: Sequence[int],
    key: jax.Array,
    *,
    sampler: str = "ddpm",
    steps: int | Sequence[int] | None = None,
    eta: float = 0.0,
    clip_x0: float | None = None,
    x_T: jax.Array | None = None,
    spacing: str = "uniform",
    jit_step: bool = False,
) -> jax.Array:
    """:func:`sample` as a Python loop over the same scan body (reference / debugging).

    Same arguments and same result as :func:`sample` (up to float rounding). With ``jit_step=True``
    each step is a jitted call: the per-step dispatch baseline that the scanned form is compared to.
    """
    carry, body, xs, final = _build_chain(
        eps_fn, schedule, shape, key, sampler, steps, eta, clip_x0, x_T, spacing
    )
    step = jax.jit(body) if jit_step else body
    n = jax.tree.leaves(xs)[0].shape[0]
    for i in range(n):
        carry, _ = step(carry, jax.tree.map(lambda a, i=i: a[i], xs))
    return final(carry)
