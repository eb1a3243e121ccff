"""Benchmark plumbing (not timings): FLOP accounting, report structure, the quality comparison."""

import jax
import jax.numpy as jnp
import numpy as np

from casc_jax import timing
from casc_jax.casc import benchmark, sampler_quality
from configs import casc_base


def _tiny():
    c = casc_base.base_config(preset="smoke")
    c.autoencoder.update(ch=8, num_codes=32)
    c.unet.update(ch=16, head_dim=16)
    c.diffusion.num_timesteps = 6
    c.benchmark.update(batch_size=2, repeats=1, max_timed_steps=3, ddim_steps=(2,), dpm_steps=(2,),
                       ddim_eta1_steps=(3,))
    return c


def test_flops_of_matmul_matches_closed_form():
    a = jnp.ones((64, 32))
    b = jnp.ones((32, 16))
    assert timing.flops_of(jax.jit(lambda a, b: a @ b), a, b) == 2 * 64 * 32 * 16


def test_speed_report_rows_and_extrapolation(tmp_path):
    config = _tiny()
    variants = [
        benchmark.Variant("ddpm", {"name": "ddpm"}),
        benchmark.Variant("ddim", {"name": "ddim", "steps": 2}),
        benchmark.Variant("loop", {"name": "ddpm"}, dispatch="loop"),
        benchmark.Variant("nocan", {"name": "ddpm"}, can=False),
    ]
    report = benchmark.speed(config, variants=variants)
    rows = {r["variant"]: r for r in report["rows"]}
    assert report["matmul_peak_gflops"] > 0
    # T=6 > max_timed_steps=3: DDPM is timed on 3 steps and scaled to 6.
    assert rows["ddpm"]["extrapolated"] and rows["ddpm"]["timed_steps"] == 3 and rows["ddpm"]["steps"] == 6
    assert not rows["ddim"]["extrapolated"] and rows["ddim"]["steps"] == 2
    # FLOPs/image = steps x denoiser + (CAN + decoder): DDPM's 6 steps cost more than DDIM's 2.
    per_step = rows["ddpm"]["denoiser_gflop_per_image_per_step"]
    np.testing.assert_allclose(
        rows["ddpm"]["gflop_per_image"] - rows["ddim"]["gflop_per_image"], 4 * per_step, rtol=1e-6
    )
    assert rows["nocan"]["denoiser_gflop_per_image_per_step"] < per_step
    for r in rows.values():
        assert r["ms_per_image"] > 0 and r["achieved_gflops"] > 0
    assert set(report["load_at_start"]) == {"load_average", "cores", "quiet"}
    assert report["small_map_convs"] == {"backend": "cpu", "taps_max_output_pixels": 4, "form_at_2x2": "taps"}
    path = benchmark.write_report(report, str(tmp_path))
    assert path.endswith("benchmark.json")


def test_default_variants_time_the_equal_quality_sampler():
    config = casc_base.base_config(preset="cpu")
    rows = {v.label: v for v in benchmark.default_variants(config)}
    fast = rows[benchmark.EQUAL_QUALITY]
    assert fast.sampler == {"name": "ddim", "steps": 10, "eta": 1.0, "spacing": "uniform"} and fast.can
    assert fast.dispatch == "scan" and "DDPM T=1000" in rows


def test_machine_load_is_busy_when_other_work_holds_half_the_cores(monkeypatch):
    monkeypatch.setattr(timing.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(timing.os, "getloadavg", lambda: (0.3, 1.0, 1.0))
    assert timing.machine_load() == {"load_average": [0.3, 1.0, 1.0], "cores": 2, "quiet": True}
    monkeypatch.setattr(timing.os, "getloadavg", lambda: (2.1, 2.0, 2.0))
    assert not timing.machine_load()["quiet"]


def test_quality_compares_every_sampler_with_ddpm():
    config = _tiny()
    config.benchmark.update(dpm_steps=(2,), spacing="uniform")
    from casc_jax.casc.system import build_casc

    params = build_casc(config).init(jax.random.key(0))
    images = np.asarray(jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), minval=-1, maxval=1))
    report = sampler_quality.quality(config, params, images)
    labels = [r["sampler"] for r in report["rows"]]
    assert labels[0] == "ddpm" and any(s.startswith("ddim") for s in labels) and any("dpmpp" in s for s in labels)
    assert "ddim eta=1 3 steps (uniform)" in labels  # stochastic DDIM, on the one spacing asked for
    stochastic = report["rows"][labels.index("ddim eta=1 3 steps (uniform)")]
    assert stochastic["config"]["eta"] == 1.0 and 0 < stochastic["psnr_vs_ddpm"] < 100.0
    assert report["rows"][0]["psnr_vs_ddpm"] == 100.0  # DDPM against itself, capped
    assert report["fastest_within_tolerance"] in labels


def test_fastest_within_tolerance_needs_both_psnr_and_lpips():
    rows = [
        {"sampler": "ddpm", "ms_per_image": 100.0, "psnr_vs_source": 20.0, "lpips_vs_source": 0.20},
        {"sampler": "fast_blurry", "ms_per_image": 1.0, "psnr_vs_source": 20.1, "lpips_vs_source": 0.25},
        {"sampler": "fast_noisy", "ms_per_image": 2.0, "psnr_vs_source": 19.5, "lpips_vs_source": 0.20},
        {"sampler": "good", "ms_per_image": 5.0, "psnr_vs_source": 19.75, "lpips_vs_source": 0.205},
        {"sampler": "slower_good", "ms_per_image": 9.0, "psnr_vs_source": 20.0, "lpips_vs_source": 0.20},
    ]
    assert sampler_quality.fastest_within_tolerance(rows)["sampler"] == "good"
    assert sampler_quality.fastest_within_tolerance(rows[:1])["sampler"] == "ddpm"


def test_diffsc_row_is_timed_like_casc():
    from casc_jax.casc.run import load_config

    config = _tiny()
    diffsc = load_config("configs/diffsc_cr48.py:smoke")
    diffsc.diffsc.unet.update(ch=16, head_dim=16)
    diffsc.diffusion.num_timesteps = 6
    row = benchmark.diffsc_row(config, diffsc)
    assert row["steps"] == 6 and row["timed_steps"] == 3 and row["extrapolated"]
    assert row["ms_per_image"] > 0 and row["gflop_per_image"] > 6 * row["denoiser_gflop_per_image_per_step"]


def test_bench_convs_forms_compute_the_same_convolution():
    from casc_jax.tools import bench_convs

    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 6))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 6, 4))
    reference = np.asarray(bench_convs.conv_xla(x, kernel), np.float64)
    # A direct sum in float64 pins XLA's result too (SAME, stride 1: one pixel of zero padding).
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    direct = sum(np.einsum("bhwc,co->bhwo", xp[:, i:i + 5, j:j + 5], np.asarray(kernel, np.float64)[i, j])
                 for i in range(3) for j in range(3))
    np.testing.assert_allclose(reference, direct, atol=1e-4)
    for name, form in bench_convs.FORMS.items():
        np.testing.assert_allclose(np.asarray(form(x, kernel)), direct, atol=1e-4, err_msg=name)


def test_quality_rows_of_distilled_students_at_every_snr():
    """Fake tiny students (the teacher's weights, perturbed): their 'distilled' rows at quality_snr and, with
    DDPM and the equal-quality setting, at quality_extra_snrs; none without students."""
    from casc_jax.casc.system import build_casc

    config = _tiny()
    config.benchmark.update(dpm_steps=(), ddim_steps=(), ddim_eta1_steps=(), quality_extra_snrs=(5.0, 20.0),
                            equal_quality_sampler=dict(name="ddim", steps=3, eta=1.0, spacing="uniform"))
    params = build_casc(config).init(jax.random.key(0))
    student = {k: jax.tree.map(lambda w: w * 1.01, params[k]) for k in ("can", "unet")}
    images = np.asarray(jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), minval=-1, maxval=1))
    report = sampler_quality.quality(config, params, images, students={2: student, 1: params})
    labels = [r["sampler"] for r in report["rows"]]
    assert labels == ["ddpm", "distilled 2 steps", "distilled 1 step"]
    assert report["rows"][1]["config"] == {"name": "distilled", "steps": 2} and report["rows"][1]["snr_db"] == 20.0
    [other] = report["other_snrs"]  # 20 dB is quality_snr: not repeated
    assert other["snr_db"] == 5.0
    assert [r["sampler"] for r in other["rows"]] == [
        "ddpm", "ddim eta=1 3 steps (uniform)", "distilled 2 steps", "distilled 1 step"]
    assert all(0 < r["psnr_vs_ddpm"] < 100.0 for r in other["rows"][1:]) and other["rows"][0]["psnr_vs_ddpm"] == 100
    plain = sampler_quality.quality(config, params, images)
    assert [r["sampler"] for r in plain["rows"]] == ["ddpm"] and "other_snrs" not in plain
    from casc_jax.tools import results

    table = results.quality_table(report)
    assert "The distilled students at 5 dB" in table and table.count("| distilled 1 step |") == 2


def test_default_variants_time_the_distilled_receiver_at_both_batches():
    config = casc_base.base_config(preset="cpu")
    rows = {v.label: v for v in benchmark.default_variants(config)}
    for n, label in ((1, "distilled 1 step"), (2, "distilled 2 steps")):
        assert rows[label].sampler == {"name": "distilled", "steps": n} and rows[label].batch is None
        assert rows[f"{label}, batch 8"].batch == 8


def test_speed_row_at_its_own_batch_and_the_unet_step_peer(tmp_path):
    config = _tiny()
    config.benchmark.update(distilled_steps=(1,), small_batches=(4,))
    variants = [v for v in benchmark.default_variants(config) if v.label.startswith("distilled")]
    report = benchmark.speed(config, variants=variants)
    rows = {r["variant"]: r for r in report["rows"]}
    assert rows["distilled 1 step"]["batch"] == 2 and rows["distilled 1 step, batch 4"]["batch"] == 4
    assert rows["distilled 1 step"]["steps"] == 1 and not rows["distilled 1 step"]["extrapolated"]
    peer = benchmark.unet_step_vs_torch(config)
    assert peer["batch"] == 2 and peer["jax"]["ms_per_image"] > 0 and peer["jax"]["gflop_per_image"] > 0
    try:
        import diffusers  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        assert "do not import here" in peer["torch"]["skipped"]
    else:
        assert peer["torch"]["ms_per_image"] > 0
    report["unet_step_peer"] = peer
    assert benchmark.write_report(report, str(tmp_path)).endswith("benchmark.json")


def test_torch_peer_is_the_paper_sized_unet():
    spec = benchmark.torch_peer_spec(casc_base.base_config())
    assert spec["in_channels"] == 5 and spec["out_channels"] == 3 and spec["sample_size"] == 8
    assert spec["block_out_channels"] == (128, 256, 256) and spec["layers_per_block"] == 2
    assert spec["down_block_types"] == ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
    assert spec["up_block_types"] == ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")


def test_receiver_parts_and_flops_do_not_depend_on_the_decoders_chunks():
    """XLA counts a loop body once: the FLOPs of a chunked decoder are those of the whole one, in the speed
    rows and in the per-part rows, whose decoder is timed both ways."""
    config = _tiny()
    config.benchmark.update(distilled_steps=(1,), small_batches=())
    variants = [v for v in benchmark.default_variants(config) if v.label == "distilled 1 step"]
    flops = {}
    for b in (0, 1):
        config.receiver.decode_batch = b
        flops[b] = benchmark.speed(config, variants=variants)["rows"][0]["gflop_per_image"]
    np.testing.assert_allclose(flops[1], flops[0], rtol=1e-6)
    parts = {r["part"]: r for r in benchmark.receiver_parts(config, peak=100.0)}
    assert list(parts) == ["CAN (per-sample weights)", "U-Net step", "decoder, whole batch", "decoder, chunks of 1"]
    assert parts["decoder, chunks of 1"]["gflop_per_image"] == parts["decoder, whole batch"]["gflop_per_image"] > 0
    for r in parts.values():
        assert r["ms_per_image"] > 0 and r["fraction_of_matmul_peak"] == r["achieved_gflops"] / 100.0
