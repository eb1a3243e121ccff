"""Sampler quality against speed on a trained CASC (`--mode=quality`): every fast sampler's output
against the 1000-step DDPM's and the sources, on the same channel draw, and the fastest one that keeps
DDPM's quality.

With progressively distilled students in the workdir (`train.casc.trained_students`), each is a row too
('distilled N steps': its own CAN and U-Net, the 'distilled' sampler), and at every SNR of
`benchmark.quality_extra_snrs` a short table compares the students with DDPM and the equal-quality setting
(`benchmark.equal_quality_sampler`) on the same images (report['other_snrs']).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from casc_jax import diffusion
from casc_jax.casc.system import build_casc
from casc_jax.timing import device_description
from casc_jax.train import parallel

log = logging.getLogger(__name__)


def quality_variants(config) -> list[dict]:
    """Fast samplers to compare with DDPM: deterministic DDIM, DPM-Solver++(2M) (uniform and
    `benchmark.spacing`), the default fast sampler (DPM-Solver++(3M)) and stochastic DDIM (eta 1, uniform
    and `benchmark.spacing`) at the configured step counts."""
    spacing = config.benchmark.spacing or diffusion.DEFAULT_SPACING
    rows = []
    for steps in config.benchmark.ddim_steps:
        rows.append({"name": "ddim", "steps": steps, "spacing": spacing})
    for steps in config.benchmark.ddim_eta1_steps:
        for grid in dict.fromkeys(("uniform", spacing)):
            rows.append({"name": "ddim", "steps": steps, "spacing": grid, "eta": 1.0})
    for steps in config.benchmark.dpm_steps:
        rows.append({"name": "dpmpp_2m", "steps": steps, "spacing": "uniform"})
        if spacing != "uniform":
            rows.append({"name": "dpmpp_2m", "steps": steps, "spacing": spacing})
        rows.append({"name": diffusion.FAST_SAMPLER, "steps": steps, "spacing": spacing})
    return rows


def distilled_variants(students: Mapping[int, dict]) -> list[dict]:
    """The 'distilled' sampler of each student, fewest steps last (rows in the order the rounds made them)."""
    return [{"name": "distilled", "steps": int(n)} for n in sorted(students, reverse=True)]


def sampler_label(sampler: Mapping) -> str:
    label = sampler["name"] + (f" eta={sampler['eta']:g}" if sampler.get("eta") else "")
    label += f" {sampler['steps']} step{'' if sampler['steps'] == 1 else 's'}" if "steps" in sampler else ""
    return label + (f" ({sampler['spacing']})" if "spacing" in sampler else "")


def quality(config, params, images: np.ndarray, lpips_fn=None, students: Mapping[int, dict] | None = None) -> dict:
    """PSNR / LPIPS of each fast sampler against the full DDPM chain and the sources, with its speed.

    images: (N, H, W, 3) in [-1, 1]. Every sampler receives the same C_hat (one channel draw at
    `benchmark.quality_snr`), so differences come from the sampler alone. `students`: {N: {'can', 'unet'}} of
    distilled N-step students (rows 'distilled N steps', also at `benchmark.quality_extra_snrs`).
    """
    students = dict(students or {})
    snr = config.benchmark.quality_snr
    samplers = [{"name": "ddpm"}] + quality_variants(config) + distilled_variants(students)
    rows = _rows_at(config, params, images, lpips_fn, students, snr, samplers)
    best = fastest_within_tolerance(rows)
    log.info(f"[quality] fastest sampler within {PSNR_TOLERANCE_DB} dB PSNR and {LPIPS_TOLERANCE} LPIPS of DDPM: "
             f"{best['sampler']} ({best['ms_per_image']:.2f} ms/image)")
    report = {"device": device_description(), "snr_db": snr, "num_images": len(images), "rows": rows,
              "fastest_within_tolerance": best["sampler"]}
    extra = [float(s) for s in config.benchmark.get("quality_extra_snrs") or () if float(s) != float(snr)]
    if students and extra:
        short = [{"name": "ddpm"}]
        if config.benchmark.get("equal_quality_sampler"):
            short.append(dict(config.benchmark.equal_quality_sampler))
        short += distilled_variants(students)
        report["other_snrs"] = [
            {"snr_db": s, "rows": _rows_at(config, params, images, lpips_fn, students, s, short)} for s in extra
        ]
    return report


def _rows_at(config, params, images, lpips_fn, students, snr: float, samplers: list[dict]) -> list[dict]:
    """One row per sampler (rows[0] must be DDPM's, the reference) at one channel draw at `snr` dB."""
    from casc_jax.metrics.image import psnr

    model = build_casc(config)
    mesh = parallel.make_mesh()
    params = parallel.replicate(params, mesh)
    x = jax.device_put(jnp.asarray(images), parallel.batch_sharded(mesh))
    c_hat = jax.jit(lambda p, x, k: model.channel(k, model.transmit(p, x), snr))(params, x, jax.random.key(3))
    key = jax.random.key(4)
    outputs, rows = {}, []
    for sampler in samplers:
        # a student brings its own CAN and U-Net; the transmitter and decoder stay the trained model's
        p = params if sampler["name"] != "distilled" else dict(params, **parallel.replicate(
            students[sampler["steps"]], mesh))
        fn = jax.jit(lambda p, c, k, s=sampler: model.receive(p, c, k, s)).lower(p, c_hat, key).compile()
        times = []
        for _ in range(max(1, config.benchmark.repeats)):  # compile excluded; the last output is scored
            start = time.perf_counter()
            out = jax.block_until_ready(fn(p, c_hat, key))
            times.append(time.perf_counter() - start)
        label = sampler_label(sampler)
        outputs[label] = out
        ref = outputs[sampler_label(samplers[0])]
        row = {
            "sampler": label,
            "config": dict(sampler),
            "snr_db": float(snr),
            "ms_per_image": 1e3 * statistics.median(times) / len(images),
            "psnr_vs_source": float(jnp.mean(psnr(x, out))),
            "psnr_vs_ddpm": float(jnp.mean(jnp.minimum(psnr(ref, out), 100.0))),
        }
        if lpips_fn is not None:
            row["lpips_vs_source"] = float(jnp.mean(lpips_fn(x, out)))
            row["lpips_vs_ddpm"] = float(jnp.mean(lpips_fn(ref, out)))
        rows.append(row)
        log.info(
            f"[quality] {snr:g} dB {label:<28} {row['ms_per_image']:8.2f} ms/image  PSNR vs source "
            f"{row['psnr_vs_source']:.2f} dB  vs DDPM {row['psnr_vs_ddpm']:.2f} dB"
            + (f"  LPIPS vs source {row['lpips_vs_source']:.4f}" if lpips_fn is not None else "")
        )
    return rows



PSNR_TOLERANCE_DB = 0.3
LPIPS_TOLERANCE = 0.01


def fastest_within_tolerance(rows: list[dict]) -> dict:
    """The fastest row whose PSNR (LPIPS) against the sources is within the tolerance of rows[0]'s (DDPM's)."""
    ddpm = rows[0]

    def keeps(r):
        ok = r["psnr_vs_source"] >= ddpm["psnr_vs_source"] - PSNR_TOLERANCE_DB
        if "lpips_vs_source" in ddpm:
            ok = ok and r["lpips_vs_source"] <= ddpm["lpips_vs_source"] + LPIPS_TOLERANCE
        return ok

    return min((r for r in rows if keeps(r)), key=lambda r: r["ms_per_image"])
