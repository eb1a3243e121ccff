"""The `cpu` presets of the CIFAR-10 reproduction: the models they build and the jobs that run them.

Shapes and sizes only (jax.eval_shape, no training): the presets' time budgets are measured, not tested.
"""

import math
import os

import jax
import pytest

from casc_jax.casc.baselines import build_deepjscc, build_diffsc
from casc_jax.casc.run import load_config
from casc_jax.casc.system import build_casc
from casc_jax.tools import reproduce
from casc_jax.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name):
    return load_config(os.path.join(ROOT, "configs", f"{name}.py:cpu"))


def _count(tree):
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize(("name", "channels", "uses", "can"), [
    ("casc_cr48", 2, 64, True), ("casc_cr96", 1, 32, True), ("casc_cr48_nocan", 2, 64, False),
])
def test_casc_cpu_preset_shapes(name, channels, uses, can):
    c = _config(name)
    model = build_casc(c)
    assert model.latent_shape == (8, 8, 3) and model.condition_shape == (8, 8, channels)
    assert model.num_channel_uses == uses  # 3072 / 48 = 64 complex symbols (CR 1/48)
    params = jax.eval_shape(model.init, jax.random.key(0))
    assert 2.5e6 < _count(params["autoencoder"]) < 3e6
    assert 4e6 < _count(params["unet"]) < 5e6
    assert bool(params["can"]) == can
    assert loop.stage_batch_size(c.train, "stage1") == 32 and loop.stage_batch_size(c.train, "stage2") == 64
    s1 = c.train.stage1  # the measured stage-1 recipe: L1 only, no GAN, lr 5e-4, 1.9 epochs
    assert (s1.lpips_weight, s1.disc_start, s1.base_lr, s1.scale_lr, s1.num_steps) == (0.0, -1, 5e-4, False, 3000)
    # evaluated with the measured equal-quality sampler (stochastic DDIM, 10 uniform steps), in float32
    assert (c.sampler.name, c.sampler.steps, c.sampler.eta, c.sampler.spacing, c.sampler.dtype) == (
        "ddim", 10, 1.0, "uniform", "float32")
    assert c.eval.num_images == 2000 and tuple(c.channel.eval_snrs) == (5.0, 10.0, 15.0, 20.0)


@pytest.mark.parametrize(("name", "c_out", "steps"), [
    ("deepjscc_mse_cr48", 2, 12_000), ("deepjscc_lpips_cr48", 2, 6_000),
    ("deepjscc_mse_cr96", 1, 12_000), ("deepjscc_lpips_cr96", 1, 6_000),
])
def test_deepjscc_cpu_preset_keeps_the_paper_architecture(name, c_out, steps):
    c = _config(name)
    model = build_deepjscc(c)
    assert model.latent_shape == (8, 8, c_out)
    assert c.deepjscc.filters == (16, 32, 32, 32) and c.train.deepjscc.num_steps == steps
    # DeepJSCC (LPIPS) trains on MSE + 0.01 VGG LPIPS and is scored on AlexNet LPIPS
    expected_loss = ("mse", "alex", 1.0) if "mse" in name else ("mse_lpips", "vgg", 0.01)
    s = c.train.deepjscc
    assert (s.loss, s.lpips_net, s.lpips_weight) == expected_loss and c.eval.lpips_net == "alex"


def test_casc_cpu_distillation_setting():
    """The cpu preset trains no rounds itself (CR 1/96 and the ablation share it); with the reproduction's
    rounds, an 8-step teacher gives students of 4, 2 and 1 steps, each round 400 steps x 64."""
    from casc_jax.casc import train as casc_train
    from configs import casc_base

    c = _config("casc_cr48")
    assert casc_train.distill_rounds(c) == ()
    d = c.train.distill
    assert (d.teacher_steps, d.num_steps, d.base_lr, d.scale_lr, d.ema_decay) == (8, 400, 1e-4, False, 0.99)
    assert loop.stage_batch_size(c.train, "distill") == 64 and c.train.evaluate
    c.train.distill.rounds = casc_base.CPU_DISTILL_ROUNDS
    assert casc_train.distill_rounds(c) == (4, 2, 1)
    assert c.train.stage2.num_steps == 4000 and c.train.stage2.ema_decay == 0.999  # untouched
    assert tuple(c.benchmark.quality_extra_snrs) == (5.0,) and c.benchmark.quality_snr == 20.0
    assert c.benchmark.quality_images == 256
    for name in ("casc_cr96", "casc_cr48_nocan"):
        assert casc_train.distill_rounds(_config(name)) == ()


def test_diffsc_cpu_preset_unet():
    c = _config("diffsc_cr48")
    model = build_diffsc(c)
    params = jax.eval_shape(model.init, jax.random.key(0))
    assert 1e6 < _count(params["unet"]) < 1.2e6
    assert loop.stage_batch_size(c.train, "diffsc") == 32 and c.train.diffsc.num_steps == 2800
    assert (c.sampler.name, c.sampler.steps, c.sampler.eta, c.sampler.spacing) == ("ddim", 10, 1.0, "uniform")


def test_reproduction_jobs_chain_their_workdirs(tmp_path):
    jobs = {j.name: j for j in reproduce.JOBS}
    assert {"casc_cr48", "casc_cr48_nocan", "casc_cr96", "diffsc_cr48", "quality_casc_cr48"} <= set(jobs)
    order = [j.name for j in reproduce.JOBS]
    for job in reproduce.JOBS:  # a job runs after the jobs whose workdirs it uses
        for used in job.uses.values():
            assert order.index(used) < order.index(job.name)
    # the students: a second 'train' of casc_cr48's workdir (its own record), only the rounds, before quality
    distill = jobs["distill_casc_cr48"]
    assert order.index("casc_cr48") < order.index("distill_casc_cr48") < order.index("quality_casc_cr48")
    assert distill.record == "job_distill.json" and not distill.main and jobs["casc_cr48"].record == "job_train.json"
    cmd = distill.command(str(tmp_path), "npz:x.npz")
    assert f"--workdir={tmp_path / 'casc_cr48'}" in cmd and "--mode=train" in cmd
    assert "--config.train.distill.rounds=3" in cmd and "--config.train.evaluate=False" in cmd
    cmd = jobs["casc_cr96"].command(str(tmp_path), "npz:x.npz")
    assert f"--config.train.stage1.workdir={tmp_path / 'casc_cr48'}" in cmd
    assert any(a.endswith("configs/casc_cr96.py:cpu") for a in cmd)


@pytest.mark.parametrize("base, reads", [("casc_cr48", "train.stage1.workdir=casc_cr48"),
                                         ("diffsc_cr48", "diffsc.deepjscc_workdir=deepjscc_mse_cr48")])
def test_v_prediction_variant_is_its_base_config_but_for_its_target_and_reads_the_same_first_stage(
    tmp_path, base, reads
):
    eps, v = _config(base), _config(f"{base}_v")
    assert (eps.diffusion.prediction, v.diffusion.prediction) == ("eps", "v")
    v.diffusion.prediction, v.name = "eps", eps.name
    assert v.to_dict() == eps.to_dict()
    field, workdir = reads.split("=")
    cmd = {j.name: j for j in reproduce.JOBS}[f"{base}_v"].command(str(tmp_path), "npz:x.npz")
    assert f"--config.{field}={tmp_path / workdir}" in cmd


def test_the_v_casc_students_and_quality_follow_its_own_stage_2():
    jobs = {j.name: j for j in reproduce.JOBS}
    assert reproduce.needs(jobs["quality_casc_cr48_v"], jobs["distill_casc_cr48_v"])
    assert reproduce.needs(jobs["distill_casc_cr48_v"], jobs["casc_cr48_v"])
    assert not reproduce.needs(jobs["quality_casc_cr48"], jobs["distill_casc_cr48_v"])


def test_jobs_of_one_config_read_the_same_workdirs():
    """A second job of a config (its students, its quality table) must point at the autoencoder the first
    trained on: without it the distillation of casc_cr48_v began a stage 1 of its own."""
    uses = {}
    for job in reproduce.JOBS:
        assert uses.setdefault(job.config, dict(job.uses)) == dict(job.uses), job.name


def test_reproduction_data_argument(tmp_path):
    assert reproduce.data_source("tfds") == "tfds:cifar10"
    with pytest.raises(FileNotFoundError, match="cifar10_train_50k_jpeg.npz"):
        reproduce.data_source(str(tmp_path))
    for name in reproduce.NPZ_FILES.values():
        (tmp_path / name).write_bytes(b"")
    source = reproduce.data_source(str(tmp_path))
    assert source.startswith("npz:train=") and ",test=" in source


def _finish(root, job, files=()):
    """Fake a finished job in workdir root: its record and the named outputs."""
    for name in (job.record, *files):
        path = root / job.config / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")


def test_reproduction_archive_keeps_results_and_reruns_only_needed_checkpoints(tmp_path):
    jobs = {j.name: j for j in reproduce.JOBS}
    root, archive = tmp_path / "runs", tmp_path / "out" / "jobs"
    assert reproduce.needs(jobs["casc_cr48_nocan"], jobs["casc_cr48"])
    assert reproduce.needs(jobs["quality_casc_cr48"], jobs["casc_cr48"])
    assert reproduce.needs(jobs["diffsc_cr48"], jobs["deepjscc_mse_cr48"])
    assert not reproduce.needs(jobs["deepjscc_lpips_cr48"], jobs["deepjscc_mse_cr48"])
    assert reproduce.needs(jobs["distill_casc_cr48"], jobs["casc_cr48"])  # it resumes casc_cr48's stages
    assert reproduce.needs(jobs["quality_casc_cr48"], jobs["distill_casc_cr48"])  # the students' rows
    assert not reproduce.needs(jobs["casc_cr48"], jobs["distill_casc_cr48"])
    assert not reproduce.needs(jobs["speed_casc_cr48"], jobs["distill_casc_cr48"])  # random-weight students
    assert not reproduce.archive_job(jobs["casc_cr48"], str(root), str(archive))  # unfinished: nothing copied
    assert not archive.exists()
    _finish(root, jobs["casc_cr48"], ("eval/metrics.json", "eval/reconstructions.npz", "checkpoints/big"))
    assert reproduce.archive_job(jobs["casc_cr48"], str(root), str(archive))
    kept = sorted(str(p.relative_to(archive)) for p in archive.rglob("*") if p.is_file())
    assert kept == ["casc_cr48/eval/metrics.json", "casc_cr48/eval/reconstructions.npz", "casc_cr48/job_train.json"]
    # A fresh machine (no workdirs): casc_cr48 is archived but the ablation, CR 1/96, quality and speed still
    # need its checkpoints, so it is retrained; with only DeepJSCC (LPIPS) left, nothing else runs.
    runs = {j.name for j in reproduce.to_run(reproduce.JOBS, str(archive))}
    assert "casc_cr48" in runs and "deepjscc_lpips_cr48" in runs
    for job in reproduce.JOBS:
        if job.name != "deepjscc_lpips_cr48":
            _finish(archive, job)
    assert [j.name for j in reproduce.to_run(reproduce.JOBS, str(archive))] == ["deepjscc_lpips_cr48"]
    _finish(archive, jobs["deepjscc_lpips_cr48"])
    assert reproduce.to_run(reproduce.JOBS, str(archive)) == []
