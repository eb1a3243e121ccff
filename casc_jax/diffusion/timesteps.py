"""Time grids for the fast samplers: which timesteps a DDIM / DPM-Solver chain evaluates the denoiser at.

Spacings for a step count S (see :func:`make_timesteps`):
- ``'logsnr'`` (default): uniform in ``lambda = log(alpha / sigma)`` between ``lambda_{T-1}`` and
  ``lambda_0``, rounded to the nearest integer timestep and made distinct (DPM-Solver's "logSNR").
- ``'logsnr_cont'``: the same targets exactly, at real-valued timesteps of the continuous-time
  schedule (:func:`~casc_jax.diffusion.schedules.t_of_lambda`); the denoiser then gets float32 ``t``.
  On the Gaussian toy (``gaussian_toy``) it is no more accurate than the rounded grid (better at some
  step counts, worse at others, within 10%), so it is an option, not the default.
- ``'uniform'``: DDIM's round-down linspace of integer timesteps.

A progressively distilled student has its own grid, :func:`distilled_timesteps` (the 'distilled' sampler).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from casc_jax.diffusion.schedules import lambda_np, t_of_lambda

SPACINGS = ("logsnr", "logsnr_cont", "uniform")
DEFAULT_SPACING = "logsnr"


def make_timesteps(
    num_timesteps: int,
    steps: int | Sequence[int] | None,
    spacing: str = DEFAULT_SPACING,
    alphas_cumprod: np.ndarray | jax.Array | None = None,
    *,
    log_alphas_cumprod: np.ndarray | jax.Array | None = None,
) -> np.ndarray:
    """The descending timesteps a DDIM / DPM-Solver chain evaluates the denoiser at.

    Args:
      num_timesteps: T.
      steps: ``None`` (every integer timestep, for any spacing), a count S, or an explicit sequence
        of distinct timesteps in ``[0, T-1]`` (any order; ``spacing`` is then ignored).
      spacing: for a count S: ``'uniform'`` is DDIM's ``t_i = floor(i (T-1) / (S-1))``, i = 0..S-1;
        ``'logsnr_cont'`` is uniform in ``lambda`` from ``lambda_{T-1}`` to ``lambda_0`` at real
        timesteps (continuous time, exact end points T-1 and 0); ``'logsnr'`` rounds those to the
        nearest integer timestep and makes them distinct (DPM-Solver's "logSNR" skip type).
      alphas_cumprod / log_alphas_cumprod: ``abar`` or ``log abar`` (T,), concrete (not traced);
        needed only for the log-SNR spacings (``log abar`` is the more precise near ``t = 0``).
    Returns:
      (S,) strictly decreasing: int32, or float64 for ``'logsnr_cont'`` with a step count.
    """
    T = int(num_timesteps)
    if spacing not in SPACINGS:
        raise ValueError(f"Unknown timestep spacing {spacing!r}; choose one of {list(SPACINGS)}.")
    if steps is None:
        return np.arange(T - 1, -1, -1, dtype=np.int32)
    if isinstance(steps, (int, np.integer)):
        S = int(steps)
        if not 1 <= S <= T:
            raise ValueError(f"steps must be in [1, T={T}], got {S}.")
        if S == 1:
            return np.array([T - 1], dtype=np.int32)
        if spacing == "uniform":
            ts = (np.arange(S, dtype=np.int64) * (T - 1)) // (S - 1)
            return ts[::-1].astype(np.int32)
        log_abar = _concrete_log_abar(alphas_cumprod, log_alphas_cumprod)
        lam = lambda_np(log_abar)
        target = np.linspace(lam[T - 1], lam[0], S)  # increasing lambda = decreasing t
        if spacing == "logsnr_cont":
            ts = t_of_lambda(log_abar, target)
            ts[0], ts[-1] = T - 1.0, 0.0
            return ts
        return _distinct_nearest(lam, target)
    ts = np.asarray(list(steps))
    if ts.ndim != 1 or ts.size == 0 or not np.issubdtype(ts.dtype, np.integer):
        raise ValueError(f"steps must be an int or a non-empty sequence of int timesteps, got {steps!r}.")
    if ts.min() < 0 or ts.max() > T - 1:
        raise ValueError(f"explicit timesteps must lie in [0, {T - 1}], got min {ts.min()}, max {ts.max()}.")
    if np.unique(ts).size != ts.size:
        raise ValueError(f"explicit timesteps must be distinct, got {list(ts)}.")
    return np.sort(ts)[::-1].astype(np.int32)


def _concrete_log_abar(alphas_cumprod, log_alphas_cumprod) -> np.ndarray:
    if alphas_cumprod is None and log_alphas_cumprod is None:
        raise ValueError("a log-SNR spacing needs the schedule's alphas_cumprod.")
    try:
        if log_alphas_cumprod is not None:
            return np.asarray(log_alphas_cumprod, dtype=np.float64)
        return np.log(np.asarray(alphas_cumprod, dtype=np.float64))
    except jax.errors.TracerArrayConversionError as e:
        raise ValueError(
            "a log-SNR spacing needs a concrete schedule: close over the Schedule instead of passing it "
            "as a traced argument of jax.jit."
        ) from e


def _distinct_nearest(lam: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The integer timesteps nearest to each target ``lambda``, made strictly decreasing and in range."""
    S = target.size
    ts = np.array([int(np.argmin(np.abs(lam - v))) for v in target], dtype=np.int64)
    for i in range(1, S):  # strictly decreasing, top down ...
        ts[i] = min(ts[i], ts[i - 1] - 1)
    ts[S - 1] = max(ts[S - 1], 0)
    for i in range(S - 2, -1, -1):  # ... and non-negative, bottom up (S <= T keeps ts[0] <= T-1)
        ts[i] = max(ts[i], ts[i + 1] + 1)
    return ts.astype(np.int32)


def distilled_timesteps(num_timesteps: int, steps: int) -> np.ndarray:
    """The N-step grid of a progressively distilled student (Salimans & Ho 2022) on a T-step schedule.

    ``t_i = floor(i T / N) - 1`` for ``i = N, ..., 1`` (descending, int32, N entries); each step goes to the
    next entry and the last, from ``t_1 = floor(T / N) - 1``, to the clean data (``-1 = t_0``). N = T is every
    timestep; the grid of N is every other point of the grid of 2N (``i T / N = 2i T / 2N``), so a teacher
    on 2N steps takes exactly two of its steps where its student takes one.
    """
    T, N = int(num_timesteps), int(steps)
    if not 1 <= N <= T:
        raise ValueError(f"steps must be in [1, T={T}], got {N}.")
    i = np.arange(N, 0, -1, dtype=np.int64)
    return ((i * T) // N - 1).astype(np.int32)
