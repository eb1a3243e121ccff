"""Diffusion: noise schedules, the forward process and loss, and scanned reverse-chain samplers.

Knows nothing about CASC: samplers take a denoiser ``eps_fn(x_t, t)`` and a :class:`Schedule`.
"""

from casc_jax.diffusion.prediction import PREDICTIONS, check_prediction, eps_from_prediction, prediction_target
from casc_jax.diffusion.registry import SamplerEntry, check_sampler, get_sampler, register_sampler, sampler_names
from casc_jax.diffusion.samplers import (
    FAST_SAMPLER,
    SAMPLERS,
    ddim_step,
    ddpm_step,
    dpmpp_2m_step,
    sample,
    sample_loop,
)
from casc_jax.diffusion.schedules import (
    SCHEDULE_KINDS,
    Schedule,
    alpha_sigma,
    epsilon_loss,
    extract,
    make_betas,
    make_schedule,
    predict_x0,
    q_sample,
)
from casc_jax.diffusion.solvers import dpmpp_3m_step
from casc_jax.diffusion.spec import SamplerSpec
from casc_jax.diffusion.timesteps import DEFAULT_SPACING, SPACINGS, distilled_timesteps, make_timesteps

__all__ = [
    "DEFAULT_SPACING",
    "FAST_SAMPLER",
    "PREDICTIONS",
    "SAMPLERS",
    "SCHEDULE_KINDS",
    "SamplerEntry",
    "SamplerSpec",
    "SPACINGS",
    "Schedule",
    "alpha_sigma",
    "check_prediction",
    "check_sampler",
    "ddim_step",
    "ddpm_step",
    "dpmpp_2m_step",
    "distilled_timesteps",
    "dpmpp_3m_step",
    "eps_from_prediction",
    "epsilon_loss",
    "extract",
    "get_sampler",
    "make_betas",
    "make_schedule",
    "make_timesteps",
    "predict_x0",
    "prediction_target",
    "q_sample",
    "register_sampler",
    "sample",
    "sample_loop",
    "sampler_names",
]
