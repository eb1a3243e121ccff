"""The sampler registry: each sampler's name -> how its reverse chain is built, how a spec is checked, and
which :class:`SamplerSpec` options it reads.

A sampler is one function registered with :func:`register_sampler`::

    @register_sampler("ddim", options=("steps", "eta", "clip_x0", "spacing"))
    def _ddim(eps_fn, schedule, spec, x_T, key_chain):
        ...
        return carry0, body, xs, final

The builder gets the denoiser ``eps_fn(x_t, t)``, the schedule, the (already checked) spec, the starting
noise ``x_T`` and the chain's key (``key_chain``, step ``i`` folds in ``i``), and returns the pieces of one
``jax.lax.scan``: ``(carry0, body, xs, final)`` with ``final(carry) -> x_0``. ``samplers.sample`` scans them;
``samplers.sample_loop`` runs the same body in a Python loop.

:func:`check_sampler` applies the checks every sampler shares (a known name, a known spacing, and no
non-default value of an option the sampler does not read: ``eta`` outside DDIM, ``corrector`` /
``final_order`` outside DPM-Solver++(3M)), then the sampler's own ``check``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from casc_jax.diffusion.spec import SamplerSpec
from casc_jax.diffusion.timesteps import SPACINGS

# The SamplerSpec fields a sampler may read; `name` and `dtype` (applied by the model's eps_fn) concern all.
SPEC_OPTIONS = ("steps", "eta", "clip_x0", "spacing", "corrector", "final_order")

ChainBuilder = Callable  # (eps_fn, schedule, spec, x_T, key_chain) -> (carry0, body, xs, final)
SpecCheck = Callable[[SamplerSpec, int], None]  # (spec, T) -> None, or ValueError


@dataclasses.dataclass(frozen=True)
class SamplerEntry:
    """One registered sampler: `build` its chain, `check` a spec for it (or None), the `options` it reads."""

    name: str
    build: ChainBuilder
    check: SpecCheck | None = None
    options: tuple[str, ...] = ()

    def __post_init__(self):
        unknown = set(self.options) - set(SPEC_OPTIONS)
        if unknown:
            raise ValueError(f"sampler {self.name!r}: unknown option(s) {sorted(unknown)}; known: {SPEC_OPTIONS}")


_REGISTRY: dict[str, SamplerEntry] = {}


def register_sampler(name: str, *, options=(), check: SpecCheck | None = None) -> Callable:
    """Decorator: register the chain builder it decorates as sampler `name` (returned unchanged)."""

    def register(build: ChainBuilder) -> ChainBuilder:
        if name in _REGISTRY:
            raise ValueError(f"sampler {name!r} is already registered")
        _REGISTRY[name] = SamplerEntry(name, build, check, tuple(options))
        return build

    return register


def sampler_names() -> tuple[str, ...]:
    """The names accepted as :class:`SamplerSpec` ``name``, in registration order."""
    return tuple(_REGISTRY)


def get_sampler(name: str) -> SamplerEntry:
    """The registered entry of `name`; an unknown name is a one-line ValueError listing the registered ones."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ValueError(f"Unknown sampler {name!r}; choose one of {list(_REGISTRY)}.")
    return entry


def readers(option: str) -> tuple[str, ...]:
    """The registered samplers that read the SamplerSpec field `option`."""
    return tuple(n for n, e in _REGISTRY.items() if option in e.options)


def _sampler_is(names: tuple[str, ...]) -> str:
    return " or ".join(f"sampler={n!r}" for n in names) or "no sampler"


def check_sampler(spec: SamplerSpec, num_timesteps: int) -> None:
    """ValueError, naming the choices, when `spec` cannot run on a T = `num_timesteps` schedule."""
    entry = get_sampler(spec.name)
    if spec.spacing not in SPACINGS:
        raise ValueError(f"Unknown timestep spacing {spec.spacing!r}; choose one of {list(SPACINGS)}.")
    eta = spec.eta
    if "eta" not in entry.options and isinstance(eta, (int, float)) and eta != 0:
        raise ValueError(f"eta={eta} only applies to {_sampler_is(readers('eta'))} (got sampler={spec.name!r}).")
    unread = ("corrector" not in entry.options and spec.corrector) or (
        "final_order" not in entry.options and (spec.final_order or 1) != 1
    )
    if unread:
        raise ValueError(
            f"corrector and final_order apply only to {_sampler_is(readers('corrector'))} (got {spec.name!r})."
        )
    if entry.check is not None:
        entry.check(spec, num_timesteps)
