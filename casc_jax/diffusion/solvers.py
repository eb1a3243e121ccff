"""Multistep exponential integrators for the probability-flow ODE in data prediction (DPM-Solver++).

With ``lambda = log(alpha / sigma)`` and the data prediction ``D = x_theta(x, t) = (x - sigma eps_hat) / alpha``,
the exact solution from ``s`` to ``t`` is (Lu et al. 2022, "DPM-Solver++", eq. 9)
    ``x_t = (sigma_t / sigma_s) x_s + alpha_t int_{lambda_s}^{lambda_t} e^{lambda - lambda_t} D(lambda) dlambda``.
A k-th order multistep step replaces ``D`` by the polynomial through the last k evaluations and
integrates it exactly: ``x_t = (sigma_t / sigma_s) x_s + alpha_t sum_j w_j D_j`` (:func:`exp_weights`).
- Order 1 is DDIM; order 2 uses DPM-Solver++(2M)'s update ``D = (1 + 1/(2r)) D_s - D_prev / (2r)``.
- Order 3 is DPM-Solver++(3M): with ``h = lambda_t - lambda_s``, ``r0 = h_0 / h``, ``r1 = h_1 / h``,
  ``D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1)``, ``D2 = (D1_0 - D1_1) / (r0 + r1)`` and
  ``phi_1 = e^{-h} - 1``, ``phi_2 = phi_1 / h + 1``, ``phi_3 = phi_2 / h - 1/2``:
  ``x_t = (sigma_t / sigma_s) x_s - alpha_t phi_1 D_s + alpha_t phi_2 D1 - 2 alpha_t phi_3 D2``.
  Note the 2: ``D2 ~ h^2 D'' / 2``, so the exact integral of the quadratic needs ``2 phi_3 D2``. The
  ``phi_3 D2`` of dpm-solver's ``dpm_solver_pytorch.py`` and diffusers' multistep scheduler halves the
  third-order term, and that update converges only at second order (``tests/casc_jax/test_solvers.py``).
- An optional corrector (UniPC's idea, Zhao et al. 2023, here with exact Adams-Moulton weights)
  redoes each step with the polynomial that also passes through the new evaluation ``D_t`` (taken at
  the predicted ``x_t``), so it costs no extra denoiser call.
- The last step goes to the clean data (``sigma = 0``, ``lambda = inf``). In ``rho = sigma / alpha``
  the ODE is ``d(x / alpha) / d rho = eps``; first order gives ``x_0 = D_s``, second order integrates the
  line through the last two ``eps`` in ``rho`` (Adams-Bashforth 2, exact if ``eps`` is linear in ``rho``).

Every coefficient depends only on the time grid, so :func:`plan` computes them in float64 numpy and the
scanned body (:func:`multistep_chain`) is a fixed linear combination: no Python branching on traced
values, the history a fixed-size carry.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from casc_jax.diffusion.schedules import Schedule, lambda_np

HISTORY = 3  # D values kept besides the newest: enough for order 3 and a 4-node corrector
# Longest step (in lambda) taken at third order; longer steps use DPM-Solver++(2M)'s update. On the
# Gaussian toy (``gaussian_toy``, LDM's schedule, lambda in [-4.4, 3.25]) third order over h ~ 0.85
# (10 steps) is 2.6x less accurate than 2M, at h ~ 0.7 (12 steps) the two are within about 20%, and
# from 15 steps on (h <= 0.55) third order wins by 2x and more.
MAX_H3 = 0.75
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(24)


def exp_weights(lam_nodes, lam_s: float, lam_t: float) -> np.ndarray:
    """``w_j = int_{lam_s}^{lam_t} e^{lam - lam_t} L_j(lam) dlam`` for the Lagrange basis ``L_j`` on the nodes.

    float64; 24-point Gauss-Legendre, exact to rounding for these polynomial-times-exponential integrands.
    """
    u_nodes = np.asarray(lam_nodes, np.float64) - lam_s
    h = float(lam_t - lam_s)
    k = u_nodes.size
    u = 0.5 * h * (_GL_NODES + 1.0)
    q = 0.5 * h * _GL_WEIGHTS * np.exp(u - h)
    moments = np.array([np.sum(q * u**m) for m in range(k)])  # int e^{u-h} u^m du
    vinv = np.linalg.inv(np.vander(u_nodes, k, increasing=True))  # monomial coefficients of each L_j
    return vinv.T @ moments


def predictor_weights(lams_hist, lam_t: float, order: int) -> np.ndarray:
    """Weights of ``D_s, D_prev, ...`` (newest first) in one step ``lam_s = lams_hist[0] -> lam_t``."""
    lam_s = float(lams_hist[0])
    if order == 2:  # DPM-Solver++(2M)'s update
        h = lam_t - lam_s
        half_inv_r = h / (2.0 * (lam_s - lams_hist[1]))
        return -math.expm1(-h) * np.array([1.0 + half_inv_r, -half_inv_r])
    return exp_weights(lams_hist[:order], lam_s, lam_t)


def grid_coefficients(schedule: Schedule, ts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 ``(alpha, sigma, lambda)`` at the timesteps ``ts`` (int or real, see ``schedules.alpha_sigma``)."""
    log_abar = np.asarray(schedule.log_alphas_cumprod, np.float64)
    la = np.interp(np.asarray(ts, np.float64), np.arange(log_abar.size), log_abar)
    return np.exp(0.5 * la), np.sqrt(-np.expm1(la)), lambda_np(la)


def plan(
    alphas: np.ndarray,
    sigmas: np.ndarray,
    lams: np.ndarray,
    order: int = 3,
    corrector: int = 0,
    final_order: int = 2,
    max_h3: float = MAX_H3,
) -> dict[str, np.ndarray]:
    """float64 coefficients of the scanned multistep chain over the grid (S,) (see :func:`multistep_chain`).

    Args:
      alphas, sigmas, lams: ``alpha, sigma, lambda`` at the S evaluation points, lambda increasing.
      order: the predictor's order (1 DDIM, 2 DPM-Solver++(2M), 3 DPM-Solver++(3M)); the first steps
        use what history there is.
      corrector: 0 (none) or the number of past evaluations the corrector's polynomial uses besides
        the new one (1..HISTORY).
      final_order: 1 (``x_0 = D``) or 2 (Adams-Bashforth 2 in ``rho``) for the last step to the data.
        2 removes the first-order floor (about 0.003 rms on the toy), but it extrapolates ``eps``: a
        denoiser whose ``x_0`` error does not shrink with ``sigma`` (an x0-prediction network) can make
        it worse than 1.
      max_h3: steps with ``h = lambda_t - lambda_s`` above this use order 2 (third-order extrapolation
        loses accuracy on long steps).
    Returns:
      per step i (rows): ``c0, c1, wc`` (the corrector: ``x_i = c0 x_pred + c1 x_{i-1} + sum wc H``)
      and ``a0, a1, a2, wp`` (the step: ``out = a0 x_i + a1 x_pred + a2 x_pred_prev + sum wp H``), where
      ``H = [D_i, D_{i-1}, ..., D_{i-HISTORY}]``.
    """
    S = lams.size
    K = HISTORY + 1
    c0, c1, wc = np.ones(S), np.zeros(S), np.zeros((S, K))
    a0, a1, a2, wp = np.zeros(S), np.zeros(S), np.zeros(S), np.zeros((S, K))
    for i in range(S):
        if corrector and i > 0:  # redo step i-1 -> i through D_i and `corrector` older values
            nodes = lams[i - min(corrector, i) : i + 1][::-1]
            c0[i], c1[i] = 0.0, sigmas[i] / sigmas[i - 1]
            wc[i, : nodes.size] = alphas[i] * exp_weights(nodes, lams[i - 1], lams[i])
        hist = lams[: i + 1][::-1]
        if i < S - 1:
            k = min(order, i + 1)
            if k == 3 and lams[i + 1] - lams[i] > max_h3:
                k = 2
            a0[i] = sigmas[i + 1] / sigmas[i]
            wp[i, :k] = alphas[i + 1] * predictor_weights(hist, lams[i + 1], k)
            continue
        # last step, to the clean data: out = x_i / alpha + (g - rho0) eps0 - g eps1 with
        # eps = x_pred / sigma - D / rho and g = rho0^2 / (2 (rho0 - rho1)) (0 for first order)
        rho0 = sigmas[i] / alphas[i]
        g = 0.0
        if final_order == 2 and i > 0:
            rho1 = sigmas[i - 1] / alphas[i - 1]
            g = rho0**2 / (2.0 * (rho0 - rho1))
            a2[i], wp[i, 1] = -g / sigmas[i - 1], g / rho1
        a0[i], a1[i], wp[i, 0] = 1.0 / alphas[i], (g - rho0) / sigmas[i], 1.0 - g / rho0
    return dict(c0=c0, c1=c1, wc=wc, a0=a0, a1=a1, a2=a2, wp=wp)


def multistep_chain(eps_fn, ts, alphas, sigmas, coef: dict, x_T: jax.Array, clip_x0: float | None):
    """Scan pieces ``(carry0, body, xs, final)`` of the chain planned by :func:`plan`.

    The carry is ``(x_pred, x_prev, x_pred_prev, H_old)`` with ``H_old`` (HISTORY, B, ...) the past
    data predictions, newest first (zeros before they exist; their weights are zero).
    """
    f32 = lambda a: jnp.asarray(np.asarray(a), jnp.float32)
    t_dtype = jnp.int32 if np.issubdtype(np.asarray(ts).dtype, np.integer) else jnp.float32
    xs = (jnp.asarray(ts, t_dtype), f32(alphas), f32(sigmas)) + tuple(
        f32(coef[k]) for k in ("c0", "c1", "wc", "a0", "a1", "a2", "wp")
    )

    def body(carry, xs_i):
        x_pred, x_prev, x_pred_prev, h_old = carry
        t, alpha, sigma, c0, c1, wc, a0, a1, a2, wp = xs_i
        eps = eps_fn(x_pred, jnp.full((x_pred.shape[0],), t, t_dtype)).astype(x_pred.dtype)
        d = (x_pred - sigma * eps) / alpha
        d = d if clip_x0 is None else jnp.clip(d, -clip_x0, clip_x0)
        h = jnp.concatenate([d[None], h_old], axis=0)
        x_i = c0 * x_pred + c1 * x_prev + jnp.tensordot(wc, h, axes=1)
        out = a0 * x_i + a1 * x_pred + a2 * x_pred_prev + jnp.tensordot(wp, h, axes=1)
        return (out.astype(x_pred.dtype), x_i.astype(x_pred.dtype), x_pred, h[:HISTORY]), None

    zeros = jnp.zeros_like(x_T)
    carry0 = (x_T, x_T, zeros, jnp.zeros((HISTORY,) + x_T.shape, x_T.dtype))
    return carry0, body, xs, lambda c: c[0]


def dpmpp_3m_step(eps_fn, schedule: Schedule, x_s, s, t, d_hist, s_hist, clip_x0: float | None = None):
    """One DPM-Solver++(3M) step ``x_s -> x_t`` (third order; see the module docstring).

    Args:
      x_s: (B, ...) at timestep ``s``; t: the target timestep (``s > t >= 0``; int or real, concrete).
      d_hist: ``(D_{s_prev}, D_{s_prev2})`` shaped like ``x_s``; s_hist: their timesteps ``(s_prev, s_prev2)``.
    Returns:
      ``(x_t, D_s)``.
    """
    ts = np.array([s, s_hist[0], s_hist[1], t], np.float64)
    al, sg, lam = grid_coefficients(schedule, ts)
    eps = eps_fn(x_s, jnp.full((x_s.shape[0],), s, jnp.asarray(s).dtype)).astype(x_s.dtype)
    d_s = (x_s - sg[0] * eps) / al[0]
    d_s = d_s if clip_x0 is None else jnp.clip(d_s, -clip_x0, clip_x0)
    w = al[3] * predictor_weights(lam[:3], lam[3], 3)
    x_t = (sg[3] / sg[0]) * x_s + w[0] * d_s + w[1] * d_hist[0] + w[2] * d_hist[1]
    return x_t.astype(x_s.dtype), d_s
