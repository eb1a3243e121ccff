"""Training: data parallel equivalence, resume after a crash, NaN stop, corrupt checkpoints, the smoke job."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from casc_jax import data as data_lib
from casc_jax.casc import run
from casc_jax.casc.train import train_casc
from casc_jax.evaluate import read_metrics
from casc_jax.train import loop
from casc_jax.train.checkpoint import CheckpointError
from configs import casc_base

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tiny(steps=4, every=2, lpips=False, disc=False):
    c = casc_base.base_config(preset="smoke")
    c.autoencoder.update(ch=8, num_codes=32)
    c.unet.update(ch=16, head_dim=16)
    c.diffusion.num_timesteps = 10
    c.train.update(batch_size=4, log_every=2, checkpoint_every=every)
    c.train.stage1.update(num_steps=steps, lpips_weight=1.0 if lpips else 0.0, disc_start=1 if disc else -1)
    c.train.stage2.update(num_steps=steps)
    c.eval.update(batch_size=4, num_images=4, grid_images=4)
    c.channel.eval_snrs = (5.0, 20.0)
    return c


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_num_steps_and_lr_follow_config():
    c = _tiny()
    assert loop.num_steps(c.train.stage1, 1000, 4) == 4
    c.train.stage1.num_steps = 0
    c.train.stage1.epochs = 2
    assert loop.num_steps(c.train.stage1, 1000, 64) == 32
    c.train.stage1.update(scale_lr=True, base_lr=4.5e-6)
    np.testing.assert_allclose(loop.learning_rate(c.train.stage1, 128), 4.5e-6 * 128)


def test_resume_after_crash_loses_at_most_k_steps_and_ends_where_an_uninterrupted_run_does(
    tmp_path, monkeypatch, progress
):
    config = _tiny(steps=4, every=2, disc=True)
    real = data_lib.make_dataset
    calls = {"n": 0}

    def crashing(*args, **kwargs):
        for batch in real(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 4:  # die while fetching stage-1 step 4's batch
                raise KeyboardInterrupt("simulated kill")
            yield batch

    with monkeypatch.context() as crash, pytest.raises(KeyboardInterrupt):  # undoes only the crash, not `progress`
        crash.setattr(data_lib, "make_dataset", crashing)
        train_casc(config, str(tmp_path))
    ckpt = loop.stage_checkpointer(str(tmp_path), "stage1", config.train)
    assert ckpt.latest_step == 2  # saved every 2 steps: at most 2 steps lost
    ckpt.close()
    params = train_casc(config, str(tmp_path))
    assert "[stage1] training steps 2 -> 4" in progress.lines
    assert "[stage2] training steps 0 -> 4" in progress.lines
    assert set(params) == {"autoencoder", "cond_encoder", "can", "unet"}

    # A rerun finds both stages done and trains nothing.
    again = train_casc(config, str(tmp_path))
    assert any("already trained" in line for line in progress.lines if line.startswith("[stage1]"))
    assert any("already trained" in line for line in progress.lines if line.startswith("[stage2]"))
    for a, b in zip(_leaves(params), _leaves(again)):
        np.testing.assert_array_equal(a, b)

    # Exact resume: the restored run saw the batches and keys the uninterrupted one did (bit-exact on CPU).
    straight = train_casc(config, str(tmp_path / "uninterrupted"))
    for a, b in zip(_leaves(params), _leaves(straight), strict=True):
        np.testing.assert_array_equal(a, b)


def test_nan_before_any_checkpoint_says_so_and_how_to_continue(tmp_path, monkeypatch):
    config = _tiny(steps=4, every=2)
    real = data_lib.make_dataset

    def poisoned(*args, **kwargs):
        for batch in real(*args, **kwargs):
            yield dict(batch, image=np.full_like(batch["image"], np.nan))

    monkeypatch.setattr(data_lib, "make_dataset", poisoned)
    with pytest.raises(loop.TrainingDiverged, match=r"step 1.*No checkpoint was saved yet.*learning rate") as err:
        train_casc(config, str(tmp_path))
    assert "None" not in str(err.value)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    config = _tiny(steps=6, every=2)
    real = data_lib.make_dataset

    def poisoned(*args, **kwargs):
        for i, batch in enumerate(real(*args, **kwargs)):
            if i == 2:  # step 3 sees a NaN image
                batch = dict(batch, image=np.full_like(batch["image"], np.nan))
            yield batch

    monkeypatch.setattr(data_lib, "make_dataset", poisoned)
    with pytest.raises(loop.TrainingDiverged, match=r"non-finite .* step 3.*last good checkpoint \(step 2\)"):
        train_casc(config, str(tmp_path))
    ckpt = loop.stage_checkpointer(str(tmp_path), "stage1", config.train)
    assert ckpt.latest_step == 2
    restored = ckpt.restore(_abstract_stage1(config))
    ckpt.close()
    assert all(np.isfinite(x).all() for x in _leaves(restored.params))


def _abstract_stage1(config, concrete=False):
    from casc_jax.casc.system import build_casc
    from casc_jax.casc.train import abstract_states, initial_states
    from casc_jax.train import parallel

    model = build_casc(config)
    if concrete:
        return initial_states(model, config, jax.random.key(0))["stage1"]
    return abstract_states(model, config, parallel.make_mesh())["stage1"]


def test_corrupt_checkpoint_is_a_clear_error_not_a_restart(tmp_path):
    ckpt_dir = os.path.join(tmp_path, "stage1", "checkpoints")
    train_casc(_tiny(steps=2, every=2), str(tmp_path))
    for root, _, files in os.walk(os.path.join(ckpt_dir, "2")):
        for name in files:
            if name not in ("_CHECKPOINT_METADATA", "commit_success.txt"):
                with open(os.path.join(root, name), "wb") as f:
                    f.write(b"garbage")
    with pytest.raises(CheckpointError, match="(?s)cannot be restored.*Nothing was overwritten"):
        train_casc(_tiny(steps=4, every=2), str(tmp_path))
    assert sorted(os.listdir(ckpt_dir)) == ["2"]


def test_checkpoint_of_another_config_is_refused(tmp_path):
    config = _tiny(steps=2, every=2)
    ckpt = loop.stage_checkpointer(str(tmp_path), "stage1", config.train)
    ckpt.save(2, _abstract_stage1(config, concrete=True), force=True)
    ckpt.close()
    wider = _tiny(steps=4, every=2)
    wider.autoencoder.ch = 16
    with pytest.raises(CheckpointError, match="another config"):
        train_casc(wider, str(tmp_path))


_EQUIVALENCE = textwrap.dedent(
    """
    import json, jax, numpy as np
    from configs import casc_base
    from casc_jax.casc.system import build_casc
    from casc_jax.train import parallel, loop
    from casc_jax.casc.train import initial_states, make_stage1_step, make_stage2_step
    import optax
    c = casc_base.base_config(preset="smoke")
    c.autoencoder.update(ch=8, num_codes=32); c.unet.update(ch=16, head_dim=16); c.diffusion.num_timesteps = 10
    c.train.stage1.update(lpips_weight=0.0, disc_start=-1)
    model = build_casc(c)
    batch = {"image": np.random.RandomState(0).uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32),
             "label": np.zeros((8,), np.int32), "valid": np.ones((8,), bool)}
    out = {}
    for n in (1, 4):
        mesh = parallel.make_mesh(n)
        states = initial_states(model, c, jax.random.key(0))
        states = {k: v.replace(opt_state=optax.sgd(0.1).init(v.params)) for k, v in states.items()}
        states = parallel.replicate(states, mesh)
        # SGD, so the parameters after one step compare the averaged gradients themselves
        # (Adam's first step is lr * sign(g) and flips on rounding for near-zero gradients).
        s1 = parallel.jit_data_parallel(make_stage1_step(model, c.train.stage1, None, optax.sgd(0.1), None, 0), mesh)
        s2 = parallel.jit_data_parallel(make_stage2_step(model, c.train.stage2, (5.0, 20.0), optax.sgd(0.1), 0), mesh)
        b = parallel.shard_batch(batch, mesh)
        st1, m1 = s1(states["stage1"], b, None)
        st2, m2 = s2(states["stage2"], b, st1.params)
        out[n] = [np.asarray(x).ravel().tolist() for x in jax.tree.leaves((st1.params, st2.params))]
        out[f"loss{n}"] = [float(m1["loss"]), float(m2["loss"])]
        out[f"devices{n}"] = len(b["image"].sharding.device_set)
    print("RESULT" + json.dumps(out))
    """
)


def test_one_step_on_four_devices_equals_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", _EQUIVALENCE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert out["devices1"] == 1 and out["devices4"] == 4
    np.testing.assert_allclose(out["loss1"], out["loss4"], rtol=1e-5)
    for a, b in zip(out["1"], out["4"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6)


def test_smoke_job_produces_every_artefact_and_resumes(tmp_path):
    """The smoke preset's whole job (LPIPS + discriminator stage 1, stage 2, eval), shrunk further."""
    config = _tiny(steps=2, every=2, lpips=True, disc=True)
    workdir = str(tmp_path)
    records = run.MODES["train"](config, workdir, {})
    assert [r["snr_db"] for r in records] == [5.0, 20.0]
    for r in records:
        assert r["num_images"] == 4 and np.isfinite(r["psnr"]) and r["lpips"] is not None
        assert r["fid"] is None and "fid_unavailable" not in r
    assert "fid" in read_metrics(os.path.join(workdir, "eval", "metrics.json"))[1]
    for name in ("metrics.json", "metrics.csv", "metrics_vs_snr.png", "samples_snr20.png"):
        assert os.path.getsize(os.path.join(workdir, "eval", name)) > 0
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))

    # eval / sample / transmit modes read the trained workdir.
    assert run.MODES["eval"](config, workdir, {})[0]["psnr"] == pytest.approx(records[0]["psnr"])
    assert os.path.exists(run.MODES["sample"](config, workdir, {}))
    from PIL import Image

    src = tmp_path / "mine.png"
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (50, 70, 3), np.uint8)).save(src)
    written = run.MODES["transmit"](config, workdir, {"images": [str(src)], "snrs": (10.0,)})
    assert len(written) == 1 and Image.open(written[0]).size == (70, 50)


def test_modes_without_training_explain_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="Train first"):
        run.MODES["eval"](_tiny(), str(tmp_path), {})
    with pytest.raises(ValueError, match="--image"):
        run.MODES["transmit"](_tiny(), str(tmp_path), {})


def test_ema_warms_up_like_ldm_litema():
    # LitEma: decay_n = min(decay, (1 + n) / (10 + n)) at the n-th update; float64 reference below.
    decays = [float(loop.ema_decay_at(0.999, n)) for n in (1, 10, 100, 1000, 5000, 20000)]
    np.testing.assert_allclose(decays, [2 / 11, 11 / 20, 101 / 110, 1001 / 1010, 5001 / 5010, 0.999], rtol=1e-6)
    ema, w = np.zeros(3), np.ones(3)
    ref = np.zeros(3)
    for n in range(1, 2001):
        ema = loop.ema_update(ema, w, 0.999, n)
        d = min(0.999, (1 + n) / (10 + n))
        ref = d * ref + (1 - d) * w
    np.testing.assert_allclose(np.asarray(ema), ref, rtol=1e-5)
    assert 1.0 - float(np.asarray(ema)[0]) < 1e-6  # the initial zeros are gone (a plain 0.999 keeps 13.5%)
