"""Reverse-chain samplers: DDPM ancestral, DDIM, DPM-Solver++(2M), DPM-Solver++(3M) and a distilled student.

Each sampler is one chain builder registered by name (``registry.register_sampler``, with its checks and
the SamplerSpec options it reads); :func:`sample` looks it up. ``'distilled'`` is the deterministic DDIM
chain on a progressively distilled student's N-step grid (``diffusion.distill``).

A sampler takes a denoiser ``eps_fn(x_t, t) -> eps_hat`` (closed over parameters and condition;
``x_t`` (B, ...), ``t`` (B,) the timestep in ``[0, T-1]``: int32, or float32 on the continuous-time
``'logsnr_cont'`` grid) and a :class:`~casc_jax.diffusion.schedules.Schedule`.
It knows nothing about the model.

Conventions:
- Timestep ``t`` has ``alpha_t = sqrt(abar_t)``, ``sigma_t = sqrt(1 - abar_t)`` and
  ``lambda_t = log(alpha_t / sigma_t)`` (half the log-SNR); at real ``t``, ``log abar`` is interpolated
  linearly (``schedules.alpha_sigma``). The clean data is timestep ``-1`` with ``abar = 1``
  (``alpha = 1``, ``sigma = 0``, ``lambda = +inf``): every sampler ends there.
- Each per-step function (:func:`ddpm_step`, :func:`ddim_step`, :func:`dpmpp_2m_step`,
  ``solvers.dpmpp_3m_step``) is the only home of its update rule; :func:`sample` runs a chain in one
  ``jax.lax.scan`` and :func:`sample_loop` runs the same scan body in a Python loop (debugging,
  per-step dispatch baseline). DPM-Solver++(3M) runs ``solvers.multistep_chain``, whose float64
  coefficients are planned from the grid.
- Keys: ``key_T, key_chain = jax.random.split(key)``; ``x_T ~ N(0, I)`` is drawn from ``key_T``
  (unless given) and step ``i`` (0-based, in chain order) uses ``jax.random.fold_in(key_chain, i)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from casc_jax.diffusion import solvers
from casc_jax.diffusion.registry import check_sampler, get_sampler, register_sampler, sampler_names
from casc_jax.diffusion.schedules import Schedule, alpha_sigma, extract, predict_x0
from casc_jax.diffusion.spec import SamplerSpec
from casc_jax.diffusion.timesteps import distilled_timesteps, make_timesteps

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]

FAST_SAMPLER = "dpmpp_3m"  # the recommended few-step sampler (with the default spacing 'logsnr')


# ----------------------------------------------------------------------------- helpers


def _t(t) -> jax.Array:
    """A timestep as int32, or float32 if it is real-valued (continuous time)."""
    t = jnp.asarray(t)
    return t.astype(jnp.int32 if jnp.issubdtype(t.dtype, jnp.integer) else jnp.float32)


def _eps(eps_fn: EpsFn, x: jax.Array, t: jax.Array) -> jax.Array:
    """Call the denoiser with the timestep as (B,) (a scalar is broadcast); result in ``x``'s dtype."""
    t = _t(t)
    t = jnp.full((x.shape[0],), t, dtype=t.dtype) if t.ndim == 0 else t
    return eps_fn(x, t).astype(x.dtype)


def _per_example(a: jax.Array, x: jax.Array) -> jax.Array:
    """A scalar as it is; a per-example (B,) coefficient as (B, 1, ..., 1), to broadcast over ``x``."""
    return a if a.ndim == 0 else a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def _clip(x0: jax.Array, clip_x0: float | None) -> jax.Array:
    return x0 if clip_x0 is None else jnp.clip(x0, -clip_x0, clip_x0)


def _alpha_sigma(schedule: Schedule, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(alpha_t, sigma_t)`` at a scalar int or real timestep; ``(1, 0)`` at ``t < 0`` (clean data)."""
    t = _t(t)
    alpha, sigma = alpha_sigma(schedule, jnp.maximum(t, 0))
    return jnp.where(t >= 0, alpha, 1.0), jnp.where(t >= 0, sigma, 0.0)


def _abar(schedule: Schedule, t: jax.Array) -> jax.Array:
    """``abar_t`` at a scalar int or real timestep, with ``abar = 1`` at ``t < 0`` (clean data)."""
    return jnp.square(_alpha_sigma(schedule, t)[0])


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
    ``t`` and ``t_prev`` are scalars (the whole batch at one timestep, as in a chain) or per-example (B,)
    arrays (the distillation targets, ``diffusion.distill``).
    """
    eps = _eps(eps_fn, x_t, t)
    a_t = _per_example(_abar(schedule, t), x_t)
    a_p = _per_example(_abar(schedule, t_prev), x_t)
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


def final_order_of(spec: SamplerSpec) -> int:
    """The order of the last step: 2 by default for DPM-Solver++(3M), else 1."""
    return 2 if spec.final_order is None and spec.name == "dpmpp_3m" else (spec.final_order or 1)


def _grid(schedule: Schedule, spec: SamplerSpec) -> tuple[np.ndarray, np.ndarray]:
    """``(ts, ts_next)``: the S descending timesteps of `spec`'s steps and spacing, and where each step goes
    (the last one to the clean data, ``-1``). steps=None: every integer timestep."""
    T, steps, spacing = schedule.num_timesteps, spec.steps, spec.spacing
    log_abar = None if spacing == "uniform" or steps is None else schedule.log_alphas_cumprod
    ts = make_timesteps(T, steps, spacing, log_alphas_cumprod=log_abar)
    return ts, np.append(ts[1:], -1).astype(ts.dtype)


def _ddim_chain(eps_fn, schedule, ts, ts_next, x_T, key_chain, eta, clip_x0):
    """The scan pieces of DDIM steps ``ts[i] -> ts_next[i]`` (:func:`ddim_step`), shared by 'ddim' and 'distilled'."""
    xs = (jnp.arange(ts.size, dtype=jnp.int32), jnp.asarray(ts), jnp.asarray(ts_next))

    def body(x, xs_i):
        i, t, t_prev = xs_i
        key_i = jax.random.fold_in(key_chain, i)
        return ddim_step(eps_fn, schedule, x, t, t_prev, key_i, eta, clip_x0), None

    return x_T, body, xs, lambda x: x


# ----------------------------------------------------------------------------- the registered samplers
#
# Each builder: (eps_fn, schedule, spec, x_T, key_chain) -> (carry0, body, xs, final); see registry.py.


def _check_ddpm(spec: SamplerSpec, num_timesteps: int) -> None:
    steps = spec.steps
    if steps is not None and not (isinstance(steps, (int, np.integer)) and int(steps) == num_timesteps):
        raise ValueError(
            f"The 'ddpm' sampler runs all T={num_timesteps} ancestral steps; got steps={steps!r}. "
            "Use steps=None, or sampler='ddim' / 'dpmpp_2m' / 'dpmpp_3m' for fewer steps."
        )


@register_sampler("ddpm", options=("steps", "clip_x0"), check=_check_ddpm)
def _ddpm(eps_fn, schedule, spec, x_T, key_chain):
    """T ancestral steps (:func:`ddpm_step`)."""
    T, clip_x0 = schedule.num_timesteps, spec.clip_x0
    ts = np.arange(T - 1, -1, -1, dtype=np.int32)
    xs = (jnp.arange(T, dtype=jnp.int32), jnp.asarray(ts))

    def body(x, xs_i):
        i, t = xs_i
        return ddpm_step(eps_fn, schedule, x, t, jax.random.fold_in(key_chain, i), clip_x0), None

    return x_T, body, xs, lambda x: x


@register_sampler("ddim", options=("steps", "eta", "clip_x0", "spacing"))
def _ddim(eps_fn, schedule, spec, x_T, key_chain):
    """DDIM (:func:`ddim_step`) on the grid of ``steps`` and ``spacing``; ``eta`` > 0 adds noise."""
    ts, ts_next = _grid(schedule, spec)
    return _ddim_chain(eps_fn, schedule, ts, ts_next, x_T, key_chain, spec.eta, spec.clip_x0)


@register_sampler("dpmpp_2m", options=("steps", "clip_x0", "spacing"))
def _dpmpp_2m(eps_fn, schedule, spec, x_T, key_chain):
    """DPM-Solver++(2M) (:func:`dpmpp_2m_step`).

    The first step is first order (no history yet), every middle step second order, and the final step
    first order ("lower_order_final"). Lu et al.'s reference lowers the final order only below 10 steps, but
    it stops at t = 0; this chain goes on to the clean data (sigma = 0, h = inf), where only the first-order
    update is defined (x_0 = D_s), as in diffusers' final_sigmas_type="zero".
    """
    ts, ts_next = _grid(schedule, spec)
    clip_x0 = spec.clip_x0
    k = np.arange(ts.size)
    second = (k > 0) & (k < ts.size - 1)
    xs = (jnp.asarray(ts), jnp.asarray(ts_next), jnp.asarray(second))

    def body(carry, xs_i):
        x, x0_prev, s_prev = carry  # fixed-size multistep history: D_{s_prev} and s_prev
        s, t, second_order = xs_i
        x_t, d_s = dpmpp_2m_step(eps_fn, schedule, x, s, t, x0_prev, s_prev, second_order, clip_x0)
        return (x_t, d_s, s), None

    carry0 = (x_T, jnp.zeros_like(x_T), xs[0][0])
    return carry0, body, xs, lambda c: c[0]


def _check_dpmpp_3m(spec: SamplerSpec, num_timesteps: int) -> None:
    del num_timesteps
    corrector, final_order = spec.corrector, final_order_of(spec)
    if not 0 <= int(corrector) <= solvers.HISTORY or final_order not in (1, 2):
        raise ValueError(f"need 0 <= corrector <= {solvers.HISTORY} and final_order in (1, 2); "
                         f"got {corrector}, {final_order}.")


@register_sampler(
    "dpmpp_3m", options=("steps", "clip_x0", "spacing", "corrector", "final_order"), check=_check_dpmpp_3m
)
def _dpmpp_3m(eps_fn, schedule, spec, x_T, key_chain):
    """DPM-Solver++(3M) (``solvers.multistep_chain``), its float64 coefficients planned from the grid."""
    del key_chain  # deterministic
    ts, _ = _grid(schedule, spec)
    try:
        alphas, sigmas, lams = solvers.grid_coefficients(schedule, ts)
    except jax.errors.TracerArrayConversionError as e:
        raise ValueError("sampler='dpmpp_3m' needs a concrete schedule: close over the Schedule "
                         "instead of passing it as a traced argument of jax.jit.") from e
    coef = solvers.plan(alphas, sigmas, lams, 3, int(spec.corrector), final_order_of(spec))
    return solvers.multistep_chain(eps_fn, ts, alphas, sigmas, coef, x_T, spec.clip_x0)


def _check_distilled(spec: SamplerSpec, num_timesteps: int) -> None:
    steps = spec.steps
    if not isinstance(steps, (int, np.integer)):
        raise ValueError(
            f"sampler='distilled' needs steps=N, the step count its student was distilled for; got steps={steps!r}."
        )
    distilled_timesteps(num_timesteps, int(steps))  # ValueError unless 1 <= N <= T


@register_sampler("distilled", options=("steps", "clip_x0"), check=_check_distilled)
def _distilled(eps_fn, schedule, spec, x_T, key_chain):
    """A progressively distilled student (``diffusion.distill``): N deterministic DDIM steps (eta = 0) on
    the uniform N-step grid it was distilled for (:func:`~casc_jax.diffusion.timesteps.distilled_timesteps`)."""
    ts = distilled_timesteps(schedule.num_timesteps, int(spec.steps))
    ts_next = np.append(ts[1:], -1).astype(ts.dtype)
    return _ddim_chain(eps_fn, schedule, ts, ts_next, x_T, key_chain, 0.0, spec.clip_x0)


SAMPLERS = sampler_names()  # the built-in samplers; sampler_names() also lists any registered later


def _build_chain(eps_fn, schedule, shape, key, spec, x_T):
    """The scan pieces shared by :func:`sample` and :func:`sample_loop`: (carry0, body, xs, final)."""
    spec = SamplerSpec.of(spec)
    check_sampler(spec, schedule.num_timesteps)
    entry = get_sampler(spec.name)
    key_T, key_chain = jax.random.split(key)
    if x_T is None:
        x_T = jax.random.normal(key_T, tuple(shape), jnp.float32)
    elif tuple(x_T.shape) != tuple(shape):
        raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape={tuple(shape)} was requested.")
    return entry.build(eps_fn, schedule, spec, x_T, key_chain)


def sample(
    eps_fn: EpsFn,
    schedule: Schedule,
    shape: Sequence[int],
    key: jax.Array,
    spec: SamplerSpec | Mapping | None = None,
    x_T: jax.Array | None = None,
) -> jax.Array:
    """Run the whole reverse chain ``x_T -> x_0`` as one ``jax.lax.scan``.

    Jit-able: ``spec`` (but for ``eta``) and ``shape`` are static (close over them); ``key``, ``x_T`` and
    ``spec.eta`` may be traced, and so may ``schedule`` for ``'ddpm'`` and for ``'ddim'`` / ``'dpmpp_2m'``
    on the ``'uniform'`` spacing (the log-SNR grids and DPM-Solver++(3M)'s float64 plan need it concrete).

    Args:
      eps_fn: denoiser ``(x_t (B, ...), t int32 (B,)) -> eps_hat (B, ...)`` (float32 ``t`` on the
        ``'logsnr_cont'`` grid).
      schedule: the discrete schedule (T timesteps).
      shape: ``(B, ...)`` of the samples.
      key: PRNG key (see the module docstring for how it is split).
      spec: the sampler, its steps and grid: a :class:`SamplerSpec`, a config mapping of its fields, or
        None (T-step DDPM). ``'ddpm'`` accepts only steps None or T.
      x_T: the starting noise (default: ``N(0, I)`` drawn from ``key``).
    Returns:
      x_0, shape ``shape``, float32 (``x_T``'s dtype when given).
    """
    carry0, body, xs, final = _build_chain(eps_fn, schedule, shape, key, spec, x_T)
    carry, _ = jax.lax.scan(body, carry0, xs)
    return final(carry)


def sample_loop(
    eps_fn: EpsFn,
    schedule: Schedule,
    shape: Sequence[int],
    key: jax.Array,
    spec: SamplerSpec | Mapping | None = None,
    x_T: jax.Array | None = None,
    jit_step: bool = False,
) -> jax.Array:
    """:func:`sample` as a Python loop over the same scan body (reference / debugging).

    Same arguments and same result as :func:`sample` (up to float rounding). With ``jit_step=True``
    each step is a jitted call: the per-step dispatch baseline that the scanned form is compared to.
    """
    carry, body, xs, final = _build_chain(eps_fn, schedule, shape, key, spec, x_T)
    step = jax.jit(body) if jit_step else body
    n = jax.tree.leaves(xs)[0].shape[0]
    for i in range(n):
        carry, _ = step(carry, jax.tree.map(lambda a, i=i: a[i], xs))
    return final(carry)
