"""Progressive distillation (Salimans & Ho 2022, "Progressive distillation for fast sampling of diffusion
models", Algorithm 2): the pure pieces, model-agnostic like the samplers.

A student (the denoiser network itself, same architecture, initialised as a copy of its teacher) learns to
take ONE deterministic DDIM step ``t -> t''`` where its teacher takes TWO (``t -> t' -> t''``). A round
halves the step count: a teacher sampled on the 2N-step grid gives a student sampled on the N-step grid
(:func:`~casc_jax.diffusion.timesteps.distilled_timesteps`; the 'distilled' sampler runs it). The first
teacher is the trained denoiser, on its own 2N-step grid.

With ``z_t = alpha_t x + sigma_t eps`` and the teacher's two DDIM steps (``samplers.ddim_step``, eta = 0)
landing at ``z_{t''}``, the student's x0 target is the one whose single DDIM step lands there too:

    x~ = (z_{t''} - (sigma_{t''} / sigma_t) z_t) / (alpha_{t''} - (sigma_{t''} / sigma_t) alpha_t),

(eps~ = (z_t - alpha_t x~) / sigma_t as a noise target), and the loss is ``w(lambda_t) ||x~ - x^_theta(z_t)||^2``
with ``x^_theta = (z_t - sigma_t eps_theta) / alpha_t``. Weightings (:data:`WEIGHTINGS`):
``'truncated_snr'`` ``max(SNR_t, 1)`` (the paper's), ``'snr'`` ``SNR_t = alpha_t^2 / sigma_t^2`` (the same as
the MSE of eps~) and ``'x0'`` (1).

Functions take a denoiser ``eps_fn(x_t (B, ...), t (B,)) -> eps_hat`` (the noise prediction, whatever the
network outputs: read x0 / v networks through ``prediction.eps_from_prediction``). Timesteps are int32 and
per example, ``-1`` being the clean data. ``casc_jax.train.distill`` builds the train step on top of these.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from casc_jax.diffusion.samplers import ddim_step
from casc_jax.diffusion.schedules import Schedule, alpha_sigma, q_sample
from casc_jax.diffusion.timesteps import distilled_timesteps

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]
WEIGHTINGS = ("truncated_snr", "snr", "x0")

__all__ = [
    "WEIGHTINGS",
    "check_student_steps",
    "distill_loss",
    "distilled_timesteps",
    "round_steps",
    "student_eps_target",
    "student_times",
    "student_x0_target",
    "teacher_two_step",
]


def check_student_steps(num_timesteps: int, steps: int) -> int:
    """`steps` (N) if a student of N steps can be distilled on a T-step schedule (a 2N-step teacher: 2N <= T)."""
    T, N = int(num_timesteps), int(steps)
    if not 1 <= 2 * N <= T:
        raise ValueError(f"a student of N={N} steps needs a 2N-step teacher on the T={T} schedule: 1 <= N <= {T // 2}.")
    return N


def round_steps(teacher_steps: int, rounds: int) -> tuple[int, ...]:
    """The student step counts of `rounds` rounds from a `teacher_steps`-step teacher: N/2, N/4, ...

    The first teacher (the trained denoiser, good at every timestep) may have an odd count, its student then
    having ``floor(N / 2)`` steps; a later round's teacher is a student, sampled only on its own grid, so its
    count must be even for each student step to be exactly two of its steps.
    """
    out, n = [], int(teacher_steps)
    for r in range(int(rounds)):
        if n < 2:
            raise ValueError(f"{rounds} rounds from {teacher_steps} teacher steps reach fewer than 1 step.")
        if r > 0 and n % 2:
            raise ValueError(
                f"round {r + 1}'s teacher is a {n}-step student (odd): its student cannot take exactly two of its "
                f"steps per step; use fewer rounds, or a teacher_steps divisible by 2^{rounds - 1}."
            )
        n //= 2
        out.append(n)
    return tuple(out)


def student_times(num_timesteps: int, steps: int, index: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(t, t', t'')`` of the student's step ``index`` (int, any shape, in ``[1, N]``; step i goes from
    grid point i to i - 1): ``t = g(2i)``, ``t' = g(2i - 1)``, ``t'' = g(2i - 2)`` on the teacher's 2N-step
    grid ``g(j) = floor(j T / 2N) - 1`` (``g(0) = -1``, the clean data). int32."""
    T, M = int(num_timesteps), 2 * check_student_steps(num_timesteps, steps)
    j = 2 * jnp.asarray(index, jnp.int32)
    g = lambda j: ((j * T) // M - 1).astype(jnp.int32)  # noqa: E731  (int32: j T < 2^31 for any real T)
    return g(j), g(j - 1), g(j - 2)


def _coefficients(schedule: Schedule, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-example float32 ``(alpha_t, sigma_t)`` shaped like ``t``, ``(1, 0)`` at ``t = -1``."""
    alpha, sigma = alpha_sigma(schedule, jnp.maximum(t, 0))
    return jnp.where(t >= 0, alpha, 1.0), jnp.where(t >= 0, sigma, 0.0)


def _alpha_sigma(schedule: Schedule, t: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """:func:`_coefficients` shaped (B, 1, ..., 1) in ``x``'s dtype, to broadcast over ``x``."""
    shape = t.shape + (1,) * (x.ndim - t.ndim)
    return tuple(c.reshape(shape).astype(x.dtype) for c in _coefficients(schedule, t))


def teacher_two_step(eps_fn: EpsFn, schedule: Schedule, z_t, t, t_mid, t_end) -> jax.Array:
    """The teacher's two deterministic DDIM steps ``z_t -> z_{t'} -> z_{t''}`` (``samplers.ddim_step``,
    eta = 0) with per-example timesteps (B,)."""
    key = jax.random.key(0)  # unused: eta = 0 adds no noise
    z_mid = ddim_step(eps_fn, schedule, z_t, t, t_mid, key, 0.0)
    return ddim_step(eps_fn, schedule, z_mid, t_mid, t_end, key, 0.0)


def student_x0_target(schedule: Schedule, z_t, t, z_end, t_end) -> jax.Array:
    """``x~ = (z_{t''} - (sigma_{t''}/sigma_t) z_t) / (alpha_{t''} - (sigma_{t''}/sigma_t) alpha_t)``: the x0
    whose single deterministic DDIM step from ``(z_t, t)`` lands on ``z_end`` at ``t_end`` (Algorithm 2)."""
    alpha, sigma = _alpha_sigma(schedule, t, z_t)
    alpha_e, sigma_e = _alpha_sigma(schedule, t_end, z_t)
    ratio = sigma_e / sigma
    return (z_end - ratio * z_t) / (alpha_e - ratio * alpha)


def student_eps_target(schedule: Schedule, z_t, t, x0_target) -> jax.Array:
    """The noise target of the same step: ``eps~ = (z_t - alpha_t x~) / sigma_t``."""
    alpha, sigma = _alpha_sigma(schedule, t, z_t)
    return (z_t - alpha * x0_target) / sigma


def _weight(schedule: Schedule, t: jax.Array, weighting: str) -> jax.Array:
    """The per-example loss weight (B,) float32 of `weighting` (:data:`WEIGHTINGS`)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown distillation weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
    if weighting == "x0":
        return jnp.ones(t.shape, jnp.float32)
    alpha, sigma = _coefficients(schedule, t)
    snr = jnp.square(alpha / sigma)
    return jnp.maximum(snr, 1.0) if weighting == "truncated_snr" else snr


def distill_loss(
    student_eps_fn: EpsFn,
    teacher_eps_fn: EpsFn,
    schedule: Schedule,
    x0: jax.Array,
    key: jax.Array,
    steps: int,
    weighting: str = "truncated_snr",
    *,
    return_aux: bool = False,
):
    """Progressive distillation's loss for one batch of clean data `x0` (B, ...), a scalar.

    Per example: a student step ``i ~ U{1..N}`` (``N = steps``) gives ``(t, t', t'')`` (:func:`student_times`),
    ``z_t = q_sample(x0, t, eps)``, the teacher's two-step ``z_{t''}`` (no gradient), the target ``x~`` and the
    weighted squared error of the student's ``x^``. `return_aux`: also ``{'t', 'x0_target', 'x0_student'}``.
    """
    T = schedule.num_timesteps
    B = x0.shape[0]
    k_i, k_eps = jax.random.split(key)
    index = jax.random.randint(k_i, (B,), 1, check_student_steps(T, steps) + 1)
    t, t_mid, t_end = student_times(T, steps, index)
    z_t = q_sample(schedule, x0, t, jax.random.normal(k_eps, x0.shape, x0.dtype))
    z_end = jax.lax.stop_gradient(teacher_two_step(teacher_eps_fn, schedule, z_t, t, t_mid, t_end))
    target = jax.lax.stop_gradient(student_x0_target(schedule, z_t, t, z_end, t_end))
    alpha, sigma = _alpha_sigma(schedule, t, z_t)
    x0_student = (z_t - sigma * student_eps_fn(z_t, t).astype(z_t.dtype)) / alpha
    err = jnp.square(x0_student.astype(jnp.float32) - target.astype(jnp.float32))
    loss = jnp.mean(_weight(schedule, t, weighting) * jnp.mean(err.reshape(B, -1), axis=-1))
    if return_aux:
        return loss, {"t": t, "x0_target": target, "x0_student": x0_student}
    return loss

