"""The CASC paper's baselines (systems 'deepjscc' and 'diffsc') as a System (`casc_jax.modes`): train, eval,
sample and transmit from the driver.

Evaluation is `casc_jax.evaluate.sweep`, so the baselines' WORKDIR/eval/metrics.json has the same records
as CASC's and `casc_jax.tools.compare` can put them side by side.

`diffsc_receiver_for_benchmark(config)` gives the DiffSC receiver as a pure function for the benchmark,
to be timed beside CASC's receiver on the same batch, T and device.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import jax

from casc_jax import diffusion
from casc_jax.casc.baselines import DiffSC, build_diffsc
from casc_jax.casc.baselines.train import build_model, load_trained_params, train_baseline
from casc_jax.evaluate import config_sweep
from casc_jax.evaluate import reconstructor as end_to_end_reconstructor
from casc_jax.modes import System, modes_of
from casc_jax.train import parallel

log = logging.getLogger(__name__)


def sampler_of(config) -> dict | None:
    """The reverse-chain sampler of a DiffSC config ({'name', 'steps', ...}); None for DeepJSCC."""
    return config.sampler.to_dict() if config.system == "diffsc" else None


def reconstructor(config, params, mesh) -> Callable:
    """`evaluate.reconstructor` of DeepJSCC, or of DiffSC decoding with the config's sampler."""
    model, sampler = build_model(config), sampler_of(config)
    if isinstance(model, DiffSC):
        return end_to_end_reconstructor(lambda p, x, key, snr: model(p, x, key, snr, sampler), params, mesh)
    return end_to_end_reconstructor(lambda p, x, key, snr: model(p, x, key, snr), params, mesh)


def evaluate(config, workdir, params):
    mesh = parallel.make_mesh()
    return config_sweep(config, workdir, reconstructor(config, params, mesh), mesh, sampler_of(config))


# One System for both: `build_model` and the stages follow the config's system.
SYSTEM = System(build_model=build_model, train=train_baseline, load=load_trained_params, evaluate=evaluate,
                reconstructor=reconstructor)
MODES = modes_of(SYSTEM)


def _diffsc_for_benchmark(config, timesteps: int | None) -> DiffSC:
    if config.system != "diffsc":
        raise ValueError(f"the DiffSC benchmark needs a system 'diffsc' config, got {config.system!r}")
    if timesteps:
        config = config.copy_and_resolve_references()
        with config.unlocked():
            config.diffusion.num_timesteps = int(timesteps)
    return build_diffsc(config)


def diffsc_receiver_for_benchmark(
    config,
    workdir: str | None = None,
    batch_size: int | None = None,
    timesteps: int | None = None,
) -> tuple[Callable[[dict, jax.Array, jax.Array], jax.Array], dict, tuple[int, ...]]:
    """DiffSC's receiver for timing beside CASC's: (fn, params, y_shape).

    fn(params, Y, key) -> X_hat (B, H, W, 3) is pure (jit it): the DeepJSCC decoder once, then the
    reverse chain of `config.sampler` over T = `timesteps` or `config.diffusion.num_timesteps` steps
    (one lax.scan), as `DiffSC.receive`. `timesteps` shortens the chain for extrapolated timing; the
    parameters do not depend on T.
    params: the trained ones in `workdir` when given and present, else random (same cost).
    y_shape: (B, H/4, W/4, c), B = `batch_size` or `config.benchmark.batch_size`; any Y of that shape
    (e.g. unit-variance normals) is a valid received signal.
    """
    model = _diffsc_for_benchmark(config, timesteps)
    if workdir is not None:
        params, source = load_trained_params(config, workdir, allow_random=True)
    else:
        params, source = model.init(jax.random.key(config.seed)), "random weights"
    sampler = config.sampler.to_dict()
    log.info(f"[benchmark] DiffSC receiver: {source}, T = {model.schedule.num_timesteps}, sampler {sampler}")

    def fn(params, y, key):
        return model.receive(params, y, key, sampler)

    batch = int(batch_size or config.benchmark.batch_size)
    return fn, params, (batch,) + model.deepjscc.latent_shape


def diffsc_parts_for_benchmark(config, timesteps: int | None = None) -> dict[str, Callable]:
    """DiffSC's receiver in parts, for FLOP counts (cf. `casc_jax.casc.benchmark.receiver_fns`); all pure.

    'receive'(params, Y, key) -> X_hat (the whole receiver, as `diffsc_receiver_for_benchmark`);
    'condition'(params, Y) -> X_jscc (B, H, W, 3) (the DeepJSCC decoder, run once per image);
    'one_eps'(params, X_jscc, X_t, t) -> eps (B, H, W, 3) (one U-Net call: one step of the chain).
    """
    model = _diffsc_for_benchmark(config, timesteps)
    sampler = config.sampler.to_dict()
    dtype = diffusion.SamplerSpec.of(sampler).compute_dtype
    return {
        "receive": lambda params, y, key: model.receive(params, y, key, sampler),
        "condition": model.condition,
        "one_eps": lambda params, x_jscc, x_t, t: model.eps(params, x_t, t, x_jscc, dtype=dtype),
    }
