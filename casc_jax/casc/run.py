"""CASC as a System (`casc_jax.modes`): train, eval, sample and transmit from the driver, and its own
benchmark and quality modes. Each mode is `mode(config, workdir, options)`."""

from __future__ import annotations

import logging
import os

from casc_jax import data as data_lib
from casc_jax.casc.system import build_casc
from casc_jax.casc.train import load_trained_params, train_casc, trained_students
from casc_jax.cli import load_config
from casc_jax.evaluate import casc_reconstructor, config_sweep
from casc_jax.modes import System, modes_of
from casc_jax.train import parallel

log = logging.getLogger(__name__)


def reconstructor(config, params, mesh):
    """CASC's end-to-end (x, key, snr) -> x_hat, decoding with the config's sampler."""
    return casc_reconstructor(build_casc(config), params, mesh, config.sampler.to_dict())


def evaluate(config, workdir, params):
    mesh = parallel.make_mesh()
    return config_sweep(config, workdir, reconstructor(config, params, mesh), mesh, config.sampler.to_dict())


def benchmark(system, config, workdir, options):
    """Speed of the receiver per sampler (random weights when WORKDIR holds no trained model)."""
    from casc_jax.casc import benchmark as bench

    params, source = load_trained_params(config, workdir, allow_random=True)
    log.info(f"[benchmark] weights: {source}")
    trained = params if source != "random weights" else None
    report = bench.speed(config, trained)
    report["weights"] = source
    report["unet_step_peer"] = bench.unet_step_vs_torch(config, trained)
    report["parts"] = bench.receiver_parts(config, trained, report["matmul_peak_gflops"])
    if config.benchmark.diffsc_config:
        diffsc = load_config(config.benchmark.diffsc_config)
        report["rows"].append(bench.diffsc_row(config, diffsc))
    return bench.write_report(report, workdir)


def quality(system, config, workdir, options):
    """Quality versus speed of the samplers on a trained model -> WORKDIR/benchmark_quality.json."""
    import json

    from casc_jax.casc import sampler_quality
    from casc_jax.evaluate import optional_metric
    from casc_jax.metrics.lpips import load_lpips

    params, source = system.load(config, workdir)
    n = config.benchmark.quality_images
    batch = next(data_lib.make_dataset(config.data, config.data.eval_split, data_lib.Stream.single_pass(n)))
    images = batch["image"][batch["valid"]]
    images = images[: len(images) - len(images) % parallel.make_mesh().devices.size]
    lpips_fn, _ = optional_metric(lambda: load_lpips(config.eval.lpips_net), "LPIPS")
    students = trained_students(config, workdir)  # distilled rows only when the workdir holds students
    if students:
        log.info(f"[quality] distilled students of {', '.join(map(str, students))} steps in {workdir}")
    report = sampler_quality.quality(config, params, images, lpips_fn=lpips_fn, students=students)
    report["weights"] = source
    path = os.path.join(workdir, "benchmark_quality.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    log.info(f"[quality] wrote {path}")
    return report


# train: stage 1, stage 2, any distillation rounds (on a trained workdir, `--config.train.distill.rounds=R`
# trains only the rounds), then the sweep unless `train.evaluate` is False.
SYSTEM = System(
    build_model=build_casc,
    train=train_casc,
    load=load_trained_params,
    evaluate=evaluate,
    reconstructor=reconstructor,
    modes={"benchmark": benchmark, "quality": quality},
)
MODES = modes_of(SYSTEM)
