"""SamplerSpec: one value for how a reverse chain runs (sampler, grid, stochasticity, precision)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from casc_jax.diffusion.timesteps import DEFAULT_SPACING


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """How :func:`~casc_jax.diffusion.sample` runs the chain; a config's `sampler` section as a type.

    name: ``'ddpm'`` (T ancestral steps), ``'ddim'``, ``'dpmpp_2m'`` or ``'dpmpp_3m'`` (``FAST_SAMPLER``).
    steps: ``None`` (every integer timestep), a step count placed by ``spacing``, or explicit int timesteps.
    eta: DDIM's stochasticity (0 deterministic, 1 DDPM-like noise); may be a traced array.
    clip_x0: clip the predicted ``x_0`` to ``[-c, c]`` in every step, or ``None``.
    spacing: ``'logsnr'`` (default), ``'logsnr_cont'`` or ``'uniform'`` (see ``make_timesteps``).
    corrector, final_order: DPM-Solver++(3M) only (past evaluations used by the corrector; order of the
    last step, default 2).
    dtype: the denoiser's compute dtype ('float32' or 'bfloat16'); the model's ``eps_fn`` applies it,
    the sampler itself runs in the dtype of ``x_T``.
    """

    name: str = "ddpm"
    steps: int | tuple[int, ...] | None = None
    eta: float | jax.Array = 0.0
    clip_x0: float | None = None
    spacing: str = DEFAULT_SPACING
    corrector: int = 0
    final_order: int | None = None
    dtype: str = "float32"

    @classmethod
    def of(cls, sampler: SamplerSpec | Mapping | None) -> SamplerSpec:
        """A spec from itself, None (the defaults) or a config mapping (a missing, None or '' field -> its
        default; steps 0 -> every timestep; unknown keys -> ValueError)."""
        if isinstance(sampler, SamplerSpec):
            return sampler
        given = {k: v for k, v in dict(sampler or {}).items() if v is not None and not (isinstance(v, str) and not v)}
        unknown = set(given) - set(cls.field_names())
        if unknown:
            raise ValueError(f"unknown sampler option(s) {sorted(unknown)}; known: {cls.field_names()}")
        steps = given.pop("steps", None)
        if isinstance(steps, (list, tuple)):
            steps = tuple(int(s) for s in steps)
        return cls(steps=steps or None, **given)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @property
    def compute_dtype(self) -> jnp.dtype | None:
        """The denoiser's dtype, or None for float32 (no casting)."""
        return None if self.dtype == "float32" else jnp.dtype(self.dtype)
