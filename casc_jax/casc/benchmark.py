"""Receiver speed and quality benchmarks (`--mode=benchmark`, `--mode=quality`).

Speed: the jitted receiver C_hat -> X_hat (CAN, scanned sampler, decoder) at the config's batch
(the paper's 256), compile time excluded, median of `repeats` runs, per sampler. For each it reports
ms/image, FLOPs/image (XLA cost analysis of one denoiser call times the number of steps, plus the
CAN and the decoder: XLA counts a scan body once, so the scanned program's own count is not used),
achieved GFLOP/s, and the device's f32 matmul peak measured in the same run. It also times a
per-step dispatch baseline (a Python loop calling a jitted step) and the CAN overhead (the same
U-Net without condition-aware layers). Chains longer than `benchmark.max_timed_steps` are timed on
that many steps of the same per-step program and scaled to the full length, and are marked so.

Quality: with a trained checkpoint, PSNR and LPIPS of each sampler's reconstructions against the
1000-step DDPM output and against the source images, so a user can pick the fastest sampler that
keeps quality.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import statistics
import time
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from casc_jax import diffusion
from casc_jax.casc.system import CASC, build_casc
from casc_jax.nn import dynamic
from casc_jax.timing import device_description, flops_of, machine_load, matmul_peak, timed
from casc_jax.train import parallel

log = logging.getLogger(__name__)

PAPER_MS_PER_IMAGE = {"CASC (RTX A6000)": 145.82, "DiffSC (RTX A6000)": 301.80}
EQUAL_QUALITY = "equal-quality fast sampler"  # the row of benchmark.equal_quality_sampler


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row of the speed table."""

    label: str
    sampler: Mapping
    can: bool = True
    dispatch: str = "scan"  # 'scan' (one compiled chain) or 'loop' (Python loop over a jitted step)
    batch: int | None = None  # None: benchmark.batch_size


def distilled_variants(config) -> list[Variant]:
    """The distilled receiver (the 'distilled' sampler: N deterministic DDIM steps of a student, which has the
    teacher's architecture, so random weights time it) at `benchmark.distilled_steps`, at `benchmark.batch_size`
    and at each of `benchmark.small_batches`."""
    b = config.benchmark
    rows = []
    for batch in (None, *(b.get("small_batches") or ())):
        for n in b.get("distilled_steps") or ():
            tag = f", batch {batch}" if batch else ""
            rows.append(Variant(f"distilled {n} step{'s' if n > 1 else ''}{tag}", {"name": "distilled", "steps": n},
                                batch=batch))
    return rows


def default_variants(config) -> list[Variant]:
    T = config.diffusion.num_timesteps
    fast = [("ddim", s) for s in config.benchmark.ddim_steps] + [("dpmpp_2m", s) for s in config.benchmark.dpm_steps]
    rows = [Variant(f"DDPM T={T}", {"name": "ddpm"})]
    rows += [Variant(f"{n.upper()} {s} steps", {"name": n, "steps": s}) for n, s in fast]
    if config.benchmark.get("equal_quality_sampler"):
        rows += [Variant(EQUAL_QUALITY, dict(config.benchmark.equal_quality_sampler))]
    rows += distilled_variants(config)
    rows += [Variant(f"DDPM T={T} bf16", {"name": "ddpm", "dtype": "bfloat16"})]
    rows += [Variant(f"DDPM T={T} no CAN", {"name": "ddpm"}, can=False)]
    rows += [Variant(f"DDPM T={T} per-step dispatch", {"name": "ddpm"}, dispatch="loop")]
    return rows


def _truncate(config, sampler: Mapping, max_steps: int) -> tuple[Mapping, int, float]:
    """(sampler actually timed, diffusion T actually used, scale to the full chain)."""
    spec = diffusion.SamplerSpec.of(sampler)
    T = config.diffusion.num_timesteps
    steps = spec.steps or T
    if not max_steps or steps <= max_steps:
        return sampler, T, 1.0
    if spec.name == "ddpm":
        return sampler, max_steps, steps / max_steps
    return dict(sampler, steps=max_steps), T, steps / max_steps


def _model_for(config, can: bool, timesteps: int) -> CASC:
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.diffusion.num_timesteps = timesteps
        if not can:
            config.can.layers = ()
    return build_casc(config)


def receiver_fns(model: CASC, sampler: Mapping):
    """(whole receiver, denoiser-only step, decoder-only, CAN-only) as jittable functions. The decoder runs
    in the model's chunks (`receiver.decode_batch`); count its FLOPs on `unchunked(model)`, since XLA's cost
    analysis counts a loop body once."""
    dtype = diffusion.SamplerSpec.of(sampler).compute_dtype

    def receive(params, c_hat, key):
        return model.receive(params, c_hat, key, sampler)

    def one_eps(params, c_hat, dynamic, z, t):
        return model.eps(params, z, t, c_hat, dynamic, dtype=dtype)

    def decode(params, z):
        return model.decode(params, z)

    def can(params, c_hat):
        return model.dynamic_weights(params, c_hat)

    return receive, one_eps, decode, can


def unchunked(model: CASC) -> CASC:
    """The same receiver with the decoder over the whole batch at once (`decode_batch` 0)."""
    return dataclasses.replace(model, decode_batch=0)


def _loop_receiver(model: CASC, sampler: Mapping, params, c_hat, key):
    """Per-step dispatch: the same chain with a Python loop calling one jitted step per timestep."""
    dtype = diffusion.SamplerSpec.of(sampler).compute_dtype
    dynamic = jax.jit(model.dynamic_weights)(params, c_hat)
    T = model.schedule.num_timesteps

    @jax.jit
    def step(params, dynamic, c_hat, x, t, key):
        eps_fn = lambda z, tt: model.eps(params, z, tt, c_hat, dynamic, dtype=dtype)  # noqa: E731
        return diffusion.ddpm_step(eps_fn, model.schedule, x, t, key)

    decode = jax.jit(model.decode)
    key_T, key_chain = jax.random.split(key)
    x = jax.random.normal(key_T, (c_hat.shape[0],) + model.latent_shape)
    for i, t in enumerate(range(T - 1, -1, -1)):
        x = step(params, dynamic, c_hat, x, jnp.int32(t), jax.random.fold_in(key_chain, i))
    return decode(params, x)


def speed(config, params=None, variants: list[Variant] | None = None) -> dict:
    """Time every variant; returns the report written to benchmark.json."""
    repeats = config.benchmark.repeats
    max_steps = config.benchmark.max_timed_steps
    mesh = parallel.make_mesh()
    load = machine_load()  # before any work of ours
    if not load["quiet"]:
        log.warning(f"[benchmark] machine busy: load average {load['load_average'][0]} on {load['cores']} cores before "
             "the benchmark started; timings are upper bounds, not a quiet-machine result")
    peak = matmul_peak()
    log.info(f"[benchmark] device: {device_description()}; f32 matmul peak {peak:.1f} GFLOP/s")
    rows, costs = [], {}
    for v in variants or default_variants(config):
        batch = v.batch or config.benchmark.batch_size
        sampler, T_used, scale = _truncate(config, v.sampler, max_steps)
        model = _model_for(config, v.can, T_used)
        p = params if params is not None and v.can else model.init(jax.random.key(config.seed))
        p = parallel.replicate(p, mesh)
        c_hat = jax.device_put(
            jax.random.normal(jax.random.key(1), (batch,) + model.condition_shape), parallel.batch_sharded(mesh)
        )
        key = jax.random.key(2)
        receive, one_eps, decode, can = receiver_fns(model, sampler)
        spec = diffusion.SamplerSpec.of(sampler)
        steps_timed = spec.steps or T_used
        if v.dispatch == "loop":
            fn = functools.partial(_loop_receiver, model, sampler)
            first, median, runs = timed(fn, p, c_hat, key, repeats=repeats)
        else:
            fn = jax.jit(receive)
            first, median, runs = timed(fn, p, c_hat, key, repeats=repeats)
        z = jnp.zeros((batch,) + model.latent_shape)
        cost_key = (v.can, spec.compute_dtype, batch)
        if cost_key not in costs:  # FLOPs depend on the network and dtype only, not on the sampler
            dynamic = jax.jit(can)(p, c_hat)
            t = jnp.zeros((batch,), jnp.int32)
            whole_decode = jax.jit(unchunked(model).decode)
            costs[cost_key] = (
                flops_of(jax.jit(one_eps), p, c_hat, dynamic, z, t) / batch,
                flops_of(whole_decode, p, z) / batch + flops_of(jax.jit(can), p, c_hat) / batch,
            )
        eps_flops, fixed_flops = costs[cost_key]
        steps_full = int(round(steps_timed * scale))
        flops = steps_full * eps_flops + fixed_flops
        seconds = median * scale if scale == 1.0 else _scaled_time(median, scale, model, p, z, decode)
        row = _row(v.label, dict(sampler, steps=steps_full if spec.steps else None), batch, steps_full,
                   steps_timed, seconds, first - median, flops, eps_flops, runs)
        row["fraction_of_matmul_peak"] = row["achieved_gflops"] / peak
        rows.append(row)
        tag = f" (timed {steps_timed} steps, scaled)" if scale != 1.0 else ""
        log.info(
            f"[benchmark] {v.label:<32} {row['ms_per_image']:9.2f} ms/image  {row['gflop_per_image']:8.2f} GFLOP/image"
            f"  {row['achieved_gflops']:7.1f} GFLOP/s ({100 * row['fraction_of_matmul_peak']:.0f}% of peak){tag}"
        )
    # Peak again at the end: on a shared machine the first reading may catch a busy moment; keep the best.
    peak = max(peak, matmul_peak())
    for row in rows:
        row["fraction_of_matmul_peak"] = row["achieved_gflops"] / peak
    log.info(f"[benchmark] f32 matmul peak (best of start and end): {peak:.1f} GFLOP/s")
    return {"device": device_description(), "matmul_peak_gflops": peak, "paper_ms_per_image": PAPER_MS_PER_IMAGE,
            "load_at_start": load, "load_at_end": machine_load(), "small_map_convs": small_map_convs(), "rows": rows}


def _step_inputs(config, params=None):
    """(model, replicated params, C_hat, one_eps, can, the CAN's weights, z_t, t) at `benchmark.batch_size`:
    the inputs of one U-Net step and of the decoder, as the sampler sees them (random weights without `params`)."""
    batch = config.benchmark.batch_size
    model, mesh = build_casc(config), parallel.make_mesh()
    p = parallel.replicate(params if params is not None else model.init(jax.random.key(config.seed)), mesh)
    c_hat = jax.device_put(jax.random.normal(jax.random.key(1), (batch,) + model.condition_shape),
                           parallel.batch_sharded(mesh))
    _, one_eps, _, can = receiver_fns(model, {"name": "ddpm"})
    z = jax.random.normal(jax.random.key(3), (batch,) + model.latent_shape)
    t = jnp.full((batch,), 500, jnp.int32)
    return model, p, c_hat, one_eps, can, jax.jit(can)(p, c_hat), z, t


def receiver_parts(config, params=None, peak: float | None = None) -> list[dict]:
    """Each part of the receiver on its own at `benchmark.batch_size`: the CAN's weights, one U-Net step,
    and the decoder over the whole batch and in chunks of `receiver.decode_batch` (when set). Rows of
    ms/image, GFLOP/image, GFLOP/s and the fraction of `peak` (the same run's matmul peak)."""
    batch, repeats = config.benchmark.batch_size, max(1, config.benchmark.repeats)
    model, p, c_hat, one_eps, can, dynamic, z, t = _step_inputs(config, params)
    whole = jax.jit(unchunked(model).decode)
    decode_flops = flops_of(whole, p, z)
    parts = [("CAN (per-sample weights)", jax.jit(can), (p, c_hat), None),
             ("U-Net step", jax.jit(one_eps), (p, c_hat, dynamic, z, t), None),
             ("decoder, whole batch", whole, (p, z), decode_flops)]
    if model.decode_batch and model.decode_batch < batch:
        parts.append((f"decoder, chunks of {model.decode_batch}", jax.jit(model.decode), (p, z), decode_flops))
    peak = peak or matmul_peak()
    rows = []
    for label, fn, args, flops in parts:
        _, median, runs = timed(fn, *args, repeats=repeats)
        flops = flops_of(fn, *args) if flops is None else flops
        gflops = flops / median / 1e9
        rows.append({"part": label, "batch": batch, "ms_per_image": 1e3 * median / batch,
                     "gflop_per_image": flops / batch / 1e9, "achieved_gflops": gflops,
                     "fraction_of_matmul_peak": gflops / peak, "runs_s": runs})
        log.info(f"[benchmark] part: {label:<28} {rows[-1]['ms_per_image']:8.2f} ms/image  "
                 f"{flops / batch / 1e9:6.2f} GFLOP/image  {gflops:6.1f} GFLOP/s ({100 * gflops / peak:.0f}% of peak)")
    return rows


def small_map_convs() -> dict:
    """Which form the static convs on <= 4-pixel maps ran in ('taps' or 'xla') on this backend."""
    return {"backend": jax.default_backend(), "taps_max_output_pixels": dynamic.taps_max_output_pixels(),
            "form_at_2x2": dynamic.static_conv_form(4)}


def _row(label, sampler, batch, steps, timed_steps, seconds, compile_s, flops, eps_flops, runs) -> dict:
    """One timing row: per-image time and FLOPs of a receiver at `batch` (FLOPs are per image)."""
    return {
        "variant": label,
        "sampler": sampler,
        "batch": batch,
        "steps": steps,
        "timed_steps": timed_steps,
        "extrapolated": timed_steps != steps,
        "ms_per_image": 1e3 * seconds / batch,
        "compile_s": compile_s,
        "gflop_per_image": flops / 1e9,
        "denoiser_gflop_per_image_per_step": eps_flops / 1e9,
        "achieved_gflops": flops * batch / seconds / 1e9,
        "runs_s": runs,
    }


def diffsc_row(config, diffsc_config) -> dict:
    """DiffSC's receiver timed like CASC's DDPM row (same batch, same T, same truncation and device)."""
    from casc_jax.casc.baselines.run import diffsc_parts_for_benchmark, diffsc_receiver_for_benchmark

    batch = config.benchmark.batch_size
    diffsc_config = diffsc_config.copy_and_resolve_references()
    with diffsc_config.unlocked():  # the full DDPM chain, whatever sampler the DiffSC config evaluates with
        diffsc_config.sampler.update(name="ddpm", steps=None)
    T = diffsc_config.diffusion.num_timesteps
    max_steps = config.benchmark.max_timed_steps
    timed_T = min(T, max_steps) if max_steps else T
    fn, params, y_shape = diffsc_receiver_for_benchmark(diffsc_config, batch_size=batch, timesteps=timed_T)
    mesh = parallel.make_mesh()
    params = parallel.replicate(params, mesh)
    y = jax.device_put(jax.random.normal(jax.random.key(1), y_shape), parallel.batch_sharded(mesh))
    first, median, runs = timed(jax.jit(fn), params, y, jax.random.key(2), repeats=config.benchmark.repeats)
    parts = diffsc_parts_for_benchmark(diffsc_config, timed_T)
    cond = jax.jit(parts["condition"])(params, y)
    x_t = jnp.zeros_like(cond)
    eps_flops = flops_of(jax.jit(parts["one_eps"]), params, cond, x_t, jnp.zeros((batch,), jnp.int32)) / batch
    cond_flops = flops_of(jax.jit(parts["condition"]), params, y) / batch
    _, cond_s, _ = timed(jax.jit(parts["condition"]), params, y, repeats=config.benchmark.repeats)
    scale = T / timed_T
    seconds = cond_s + scale * max(median - cond_s, 0.0)
    flops = T * eps_flops + cond_flops
    row = _row(f"DiffSC DDPM T={T}", diffsc_config.sampler.to_dict(), batch, T, timed_T, seconds, first - median,
               flops, eps_flops, runs)
    log.info(f"[benchmark] {row['variant']:<32} {row['ms_per_image']:9.2f} ms/image  {row['gflop_per_image']:8.2f} "
             f"GFLOP/image  {row['achieved_gflops']:7.1f} GFLOP/s")
    return row


TORCH_PEER = "PyTorch eager peer (diffusers UNet2DModel)"


def torch_peer_spec(config) -> dict:
    """diffusers UNet2DModel kwargs at the size of the config's U-Net: the latent z_t and C_hat concatenated
    as its input (8x8x5 at CR 1/48), `unet.ch` x `ch_mult` channels, `num_res_blocks` per level, attention
    blocks at the levels of `attn_resolutions` (downsampling factors), `head_dim` channels per head. It has no
    condition-aware layers: it is the static U-Net's peer."""
    model = build_casc(config)
    u = config.unet
    levels = range(len(u.ch_mult))
    attn = [2**i in tuple(u.attn_resolutions) for i in levels]
    return dict(
        sample_size=model.latent_shape[0],
        in_channels=model.latent_shape[-1] + model.condition_shape[-1],
        out_channels=model.latent_shape[-1],
        block_out_channels=tuple(u.ch * m for m in u.ch_mult),
        layers_per_block=u.num_res_blocks,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        attention_head_dim=u.head_dim,
    )


def unet_step_vs_torch(config, params=None, threads: int = 2) -> dict:
    """One U-Net step (ms per image at `benchmark.batch_size`): ours (jitted, with the CAN's weights made
    beforehand, as inside the sampler) and, where torch and diffusers import, the PyTorch eager peer at the same
    size on `threads` threads (`torch_peer_spec`); otherwise {'torch': {'skipped': why}}."""
    batch, repeats = config.benchmark.batch_size, max(1, config.benchmark.repeats)
    _, p, c_hat, one_eps, _, dynamic, z, t = _step_inputs(config, params)
    fn = jax.jit(one_eps)
    _, median, runs = timed(fn, p, c_hat, dynamic, z, t, repeats=repeats)
    flops = flops_of(fn, p, c_hat, dynamic, z, t) / batch
    out = {"batch": batch, "jax": {"ms_per_image": 1e3 * median / batch, "gflop_per_image": flops / 1e9,
                                   "achieved_gflops": flops * batch / median / 1e9, "runs_s": runs}}
    try:
        import diffusers
        import torch
    except ImportError as err:  # not a dependency of this project: the peer is optional
        out["torch"] = {"skipped": f"torch / diffusers do not import here ({err}); install both to time the peer"}
        log.info(f"[benchmark] {TORCH_PEER}: skipped ({out['torch']['skipped']})")
        return out
    torch.set_num_threads(threads)
    spec = torch_peer_spec(config)
    net = diffusers.UNet2DModel(**spec).eval()
    x = torch.zeros((batch, spec["in_channels"], spec["sample_size"], spec["sample_size"]))
    tt = torch.full((batch,), 500, dtype=torch.long)
    with torch.no_grad():
        net(x, tt)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            net(x, tt)
            times.append(time.perf_counter() - start)
    tm = statistics.median(times)
    out["torch"] = {"ms_per_image": 1e3 * tm / batch, "threads": threads, "spec": spec, "runs_s": times,
                    "params": sum(q.numel() for q in net.parameters()), "torch": torch.__version__,
                    "diffusers": diffusers.__version__}
    log.info(f"[benchmark] U-Net step at batch {batch}: ours {out['jax']['ms_per_image']:.3f} ms/image, "
             f"{TORCH_PEER} {out['torch']['ms_per_image']:.3f} ms/image ({threads} threads)")
    return out


def _scaled_time(median: float, scale: float, model, params, z, decode) -> float:
    """Scale only the chain: total = decoder + scale * (measured - decoder)."""
    _, dec, _ = timed(jax.jit(decode), params, z, repeats=3)
    return dec + scale * max(median - dec, 0.0)


def write_report(report: dict, workdir: str) -> str:
    path = os.path.join(workdir, "benchmark.json")
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    rows = report["rows"]
    load = report.get("load_at_start")
    state = "" if load is None else (
        f"; load average {load['load_average'][0]} on {load['cores']} cores at start ("
        + ("quiet" if load["quiet"] else "busy: timings are upper bounds") + ")")
    log.info(f"\n[benchmark] {report['device']}{state}")
    log.info(f"{'variant':<34}{'ms/image':>10}{'GFLOP/img':>11}{'GFLOP/s':>9}{'% peak':>8}")
    peak = report["matmul_peak_gflops"]
    for r in rows:
        log.info(
            f"{r['variant']:<34}{r['ms_per_image']:>10.2f}{r['gflop_per_image']:>11.2f}"
            f"{r['achieved_gflops']:>9.1f}{100 * r['achieved_gflops'] / peak:>7.0f}%"
            + ("  *" if r["extrapolated"] else "")
        )
    for name, ms in report["paper_ms_per_image"].items():
        log.info(f"{'paper: ' + name:<34}{ms:>10.2f}")
    for r in report.get("parts", ()):
        log.info(f"{'part: ' + r['part']:<34}{r['ms_per_image']:>10.2f}{r['gflop_per_image']:>11.2f}"
                 f"{r['achieved_gflops']:>9.1f}{100 * r['achieved_gflops'] / peak:>7.0f}%")
    scan = next((r for r in rows if "dispatch" not in r["variant"] and "CAN" not in r["variant"]), None)
    loop = next((r for r in rows if "dispatch" in r["variant"]), None)
    nocan = next((r for r in rows if "no CAN" in r["variant"]), None)
    if scan and loop:
        log.info(f"scanned chain vs per-step dispatch: {loop['ms_per_image'] / scan['ms_per_image']:.2f}x faster")
    if scan and nocan:
        log.info(f"CAN overhead: {100 * (scan['ms_per_image'] / nocan['ms_per_image'] - 1):+.1f}% (CASC vs no-CAN)")
    fast = next((r for r in rows if r["variant"] == EQUAL_QUALITY), None)
    if fast:
        paper = report["paper_ms_per_image"]["CASC (RTX A6000)"]
        log.info(f"equal-quality fast sampler {fast['sampler']}: {fast['ms_per_image']:.2f} ms/image, "
                 f"{fast['ms_per_image'] / paper:.3f} x the paper's {paper} (RTX A6000)")
    distilled = [r for r in rows if r["variant"].startswith("distilled")]
    if distilled:  # at the largest timed batch (the paper's 256)
        batch = max(r["batch"] for r in distilled)
        best = min((r for r in distilled if r["batch"] == batch), key=lambda r: r["ms_per_image"])
        half = report["paper_ms_per_image"]["CASC (RTX A6000)"] / 2
        log.info(f"{best['variant']} at batch {best['batch']}: {best['ms_per_image']:.2f} ms/image against half the "
                 f"paper's time, {half:.2f} ({best['ms_per_image'] / half:.3f} x)")
    diffsc = next((r for r in rows if r["variant"].startswith("DiffSC")), None)
    if scan and diffsc:
        ratio = scan["ms_per_image"] / diffsc["ms_per_image"]
        log.info(f"CASC / DiffSC time: {ratio:.3f} ({100 * (1 - ratio):.1f}% lower; paper: 145.82 / 301.80 = 0.483)")
    peer = report.get("unet_step_peer")
    if peer:
        tr = peer["torch"]
        theirs = tr.get("skipped") or f"{tr['ms_per_image']:.3f} ms/image ({tr['threads']} threads)"
        log.info(f"U-Net step, batch {peer['batch']}: ours {peer['jax']['ms_per_image']:.3f} ms/image; "
                 f"{TORCH_PEER}: {theirs}")
    log.info("* timed on fewer steps of the same per-step program and scaled to the full chain")
    log.info(f"wrote {path}")
    return path
