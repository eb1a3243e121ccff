"""CASC's launcher modes: train, eval, sample, transmit. Each is `mode(config, workdir, options)`."""

from __future__ import annotations

import logging
import os

from casc_jax import data as data_lib
from casc_jax.cli import load_config
from casc_jax.evaluate import casc_reconstructor, config_sweep
from casc_jax.modes import check_transmit_options, sample_grid, transmit_images
from casc_jax.system import build_casc
from casc_jax.train import parallel
from casc_jax.train.casc import load_trained_params, train_casc, trained_students

log = logging.getLogger(__name__)

build_model = build_casc  # launch.py's check that the config gives a model


def _sweep(config, workdir, params):
    mesh = parallel.make_mesh()
    sampler = config.sampler.to_dict()
    reconstruct = casc_reconstructor(build_casc(config), params, mesh, sampler)
    return config_sweep(config, workdir, reconstruct, mesh, sampler)


def train(config, workdir, options):
    """Stage 1, stage 2, any distillation rounds, then the evaluation sweep unless `train.evaluate` is False
    (each resumes from WORKDIR: on a trained workdir, `--config.train.distill.rounds=R` trains only the rounds)."""
    params = train_casc(config, workdir)
    if not config.train.get("evaluate", True):
        log.info("[train] train.evaluate is False: no evaluation sweep")
        return {}
    return _sweep(config, workdir, params)


def evaluate(config, workdir, options):
    params, source = load_trained_params(config, workdir)
    log.info(f"[eval] {source}")
    return _sweep(config, workdir, params)


def sample(config, workdir, options):
    """A grid of test images and their reconstructions at each evaluation SNR -> WORKDIR/samples.png."""
    params, source = load_trained_params(config, workdir)
    log.info(f"[sample] {source}")
    reconstruct = casc_reconstructor(build_casc(config), params, parallel.make_mesh(), config.sampler.to_dict())
    return sample_grid(config, workdir, reconstruct)


def transmit(config, workdir, options):
    """A user's own images -> reconstructed PNGs at each SNR in `--snr` (default: the eval SNRs)."""
    check_transmit_options(options)
    model = build_casc(config)
    mesh = parallel.make_mesh()
    params, source = load_trained_params(config, workdir)
    log.info(f"[transmit] {source}; {model.num_channel_uses} channel uses per image")
    reconstruct = casc_reconstructor(model, params, mesh, config.sampler.to_dict())
    return transmit_images(config, workdir, options, reconstruct, mesh.devices.size)


def benchmark(config, workdir, options):
    """Speed of the receiver per sampler (random weights when WORKDIR holds no trained model)."""
    from casc_jax import benchmark as bench
    from casc_jax.train.casc import load_trained_params as load

    params, source = load(config, workdir, allow_random=True)
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


def quality(config, workdir, options):
    """Quality versus speed of the samplers on a trained model -> WORKDIR/benchmark_quality.json."""
    import json

    from casc_jax import sampler_quality
    from casc_jax.evaluate import optional_metric
    from casc_jax.metrics.lpips import load_lpips

    params, source = load_trained_params(config, workdir)
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


MODES = {
    "train": train,
    "eval": evaluate,
    "sample": sample,
    "transmit": transmit,
    "benchmark": benchmark,
    "quality": quality,
}
