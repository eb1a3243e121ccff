"""Sampler accuracy on a Gaussian toy, where the probability-flow ODE is solved in closed form.

Data ``x_0 ~ N(mu, diag(s^2))`` in D dimensions. Along the forward process ``x_t ~ N(alpha_t mu,
diag(alpha_t^2 s^2 + sigma_t^2))``, the exact denoiser is linear,
    ``eps*(x, t) = sigma_t (x - alpha_t mu) / (alpha_t^2 s^2 + sigma_t^2)``,
and the probability-flow ODE maps ``x_T`` (at timestep T-1) to the data by the monotone transport
    ``x_0 = mu + s (x_T - alpha_T mu) / sqrt(alpha_T^2 s^2 + sigma_T^2)``.
A sampler run with ``eps*`` from the same ``x_T`` differs from that map only by its discretisation
error; :func:`rms_error` measures it. ``alpha_t, sigma_t`` at real ``t`` follow ``schedules.alpha_sigma``.

``python -m casc_jax.diffusion.gaussian_toy`` prints the table (rms error vs steps per sampler / spacing).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from casc_jax.diffusion.samplers import sample
from casc_jax.diffusion.schedules import Schedule, alpha_sigma, make_schedule
from casc_jax.diffusion.spec import SamplerSpec

# (label, SamplerSpec fields but steps); the first rows are the baselines
VARIANTS = (
    ("DDIM uniform", dict(name="ddim", spacing="uniform")),
    ("DDIM logsnr", dict(name="ddim", spacing="logsnr")),
    ("2M uniform", dict(name="dpmpp_2m", spacing="uniform")),
    ("2M logsnr", dict(name="dpmpp_2m", spacing="logsnr")),
    ("2M logsnr_cont", dict(name="dpmpp_2m", spacing="logsnr_cont")),
    ("3M logsnr (default)", dict(name="dpmpp_3m", spacing="logsnr")),
    ("3M logsnr_cont", dict(name="dpmpp_3m", spacing="logsnr_cont")),
    ("3M logsnr final_order=1", dict(name="dpmpp_3m", spacing="logsnr", final_order=1)),
    ("3M logsnr corrector=1", dict(name="dpmpp_3m", spacing="logsnr", corrector=1)),
    ("3M logsnr corrector=3", dict(name="dpmpp_3m", spacing="logsnr", corrector=3)),
)


def toy(dim: int = 192, num: int = 256, seed: int = 0, s_range=(0.1, 1.0)):
    """``(mu (D,), s (D,), x_T (N, D))``: ``mu ~ N(0, 1)``, ``s`` log-uniform in ``s_range``, ``x_T ~ N(0, I)``."""
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal(dim)
    s = np.exp(rng.uniform(np.log(s_range[0]), np.log(s_range[1]), dim))
    return mu, s, rng.standard_normal((num, dim))


def eps_star(schedule: Schedule, mu, s):
    """The exact ``eps_fn(x (B, D), t (B,))`` of the toy, for int or real ``t``."""
    mu, s = jnp.asarray(mu, jnp.float32), jnp.asarray(s, jnp.float32)

    def eps_fn(x, t):
        alpha, sigma = alpha_sigma(schedule, t)
        alpha, sigma = alpha[:, None], sigma[:, None]
        return sigma * (x - alpha * mu) / (alpha**2 * s**2 + sigma**2)

    return eps_fn


def exact_map(schedule: Schedule, mu, s, x_T) -> np.ndarray:
    """The probability-flow ODE's map from timestep T-1 to the data, in float64."""
    log_abar = float(schedule.log_alphas_cumprod[-1])
    alpha, sigma2 = np.exp(0.5 * log_abar), -np.expm1(log_abar)
    return mu + s * (x_T - alpha * mu) / np.sqrt(alpha**2 * s**2 + sigma2)


def rms_error(schedule: Schedule, problem, steps: int, **kwargs) -> float:
    """rms over samples and dimensions of (sampler output - exact map)."""
    mu, s, x_T = problem
    x_T32 = jnp.asarray(x_T, jnp.float32)
    spec = SamplerSpec(steps=steps, **kwargs)
    fn = jax.jit(lambda x: sample(eps_star(schedule, mu, s), schedule, x.shape, jax.random.key(0), spec, x_T=x))
    x0 = np.asarray(fn(x_T32), np.float64)
    return float(np.sqrt(np.mean((x0 - exact_map(schedule, mu, s, x_T)) ** 2)))


def accuracy_table(steps: Sequence[int] = (5, 10, 15, 20, 50), variants=VARIANTS, problem=None,
                   schedule: Schedule | None = None) -> dict[str, list[float]]:
    """``{label: [rms error at each step count]}`` on LDM's schedule (T = 1000) by default."""
    schedule = make_schedule("ldm_linear", 1000) if schedule is None else schedule
    problem = toy() if problem is None else problem
    return {label: [rms_error(schedule, problem, n, **kw) for n in steps] for label, kw in variants}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 15, 20, 50])
    args = parser.parse_args(argv)
    table = accuracy_table(args.steps)
    print("| sampler / spacing | " + " | ".join(f"{n} steps" for n in args.steps) + " |")
    print("|---|" + "---|" * len(args.steps))
    for label, errs in table.items():
        print(f"| {label} | " + " | ".join(f"{e:.4f}" for e in errs) + " |")


if __name__ == "__main__":
    main()
