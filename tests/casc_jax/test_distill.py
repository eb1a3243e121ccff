"""Progressive distillation (diffusion.distill, train.distill) and the sampler registry's 'distilled' entry."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from casc_jax.diffusion import (
    SamplerSpec,
    check_sampler,
    ddim_step,
    distilled_timesteps,
    get_sampler,
    make_schedule,
    q_sample,
    register_sampler,
    registry,
    sample,
    sample_loop,
    sampler_names,
)
from casc_jax.diffusion import distill as dl
from casc_jax.diffusion.gaussian_toy import eps_star
from casc_jax.train.distill import initial_student_state, make_distill_step
from configs import common

MU, S = np.array([0.5, -0.3]), np.array([0.3, 0.6])


def _toy_eps(x, t):
    return 0.5 * jnp.tanh(x) + 0.01 * t[:, None].astype(x.dtype) - 0.1 * x**2


# ----------------------------------------------------------------------------- the student's grid


def test_distilled_grid_halves_and_nests():
    T = 1000
    np.testing.assert_array_equal(distilled_timesteps(T, T), np.arange(T - 1, -1, -1))
    np.testing.assert_array_equal(distilled_timesteps(T, 4), [999, 749, 499, 249])
    np.testing.assert_array_equal(distilled_timesteps(T, 1), [999])
    for n in (1, 2, 3, 7, 125, 250, 500):
        g, g2 = distilled_timesteps(T, n), distilled_timesteps(T, 2 * n)
        assert g.dtype == np.int32 and g.size == n and np.all(np.diff(g) < 0) and g[0] == T - 1
        np.testing.assert_array_equal(g, g2[::2])  # every other point of the teacher's grid
        t, t_mid, t_end = (np.asarray(a) for a in dl.student_times(T, n, np.arange(n, 0, -1)))
        np.testing.assert_array_equal(t, g)
        np.testing.assert_array_equal(t_mid, g2[1::2])
        np.testing.assert_array_equal(t_end, np.append(g[1:], -1))
    assert dl.round_steps(1000, 3) == (500, 250, 125) and dl.round_steps(999, 1) == (499,)  # odd first teacher: ok
    with pytest.raises(ValueError, match="odd"):
        dl.round_steps(1000, 4)  # 125 -> 62 would not nest
    with pytest.raises(ValueError, match="steps must be in"):
        distilled_timesteps(T, T + 1)
    with pytest.raises(ValueError, match="2N-step teacher"):
        dl.check_student_steps(10, 6)
    with pytest.raises(ValueError, match="fewer than 1 step"):
        dl.round_steps(4, 3)


# ----------------------------------------------------------------------------- the closed-form identity


@pytest.mark.parametrize("steps", [1, 4, 125, 500])
def test_student_target_makes_one_ddim_step_land_on_the_teachers_two(steps):
    """x~ (and eps~) of Algorithm 2: ONE deterministic DDIM step of the student from t to t'' lands exactly
    on the teacher's two DDIM steps t -> t' -> t'', with the Gaussian toy's exact eps as the teacher."""
    T = 1000
    sch = make_schedule("ldm_linear", T)
    teacher = eps_star(sch, MU, S)
    B = 64
    k_i, k_z = jax.random.split(jax.random.key(steps))
    index = jax.random.randint(k_i, (B,), 1, steps + 1)
    t, t_mid, t_end = dl.student_times(T, steps, index)
    x0 = jnp.asarray(MU, jnp.float32) + S * jax.random.normal(k_z, (B, 2))
    z_t = q_sample(sch, x0, t, jax.random.normal(k_i, (B, 2)))
    z_end = dl.teacher_two_step(teacher, sch, z_t, t, t_mid, t_end)
    x0_target = dl.student_x0_target(sch, z_t, t, z_end, t_end)
    eps_target = dl.student_eps_target(sch, z_t, t, x0_target)
    one = ddim_step(lambda x, tt: eps_target, sch, z_t, t, t_end, jax.random.key(0), 0.0)
    np.testing.assert_allclose(np.asarray(one), np.asarray(z_end), rtol=1e-5, atol=1e-5)
    # the per-example step is the chain's scalar step, example by example
    for b in range(0, B, 16):
        ref = ddim_step(teacher, sch, z_t[b : b + 1], t[b], t_mid[b], jax.random.key(0), 0.0)
        got = ddim_step(teacher, sch, z_t[b : b + 1], t[b : b + 1], t_mid[b : b + 1], jax.random.key(0), 0.0)
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-6, atol=1e-6)
    # a teacher that already takes a 1-step path exactly gives its own x0 as the target: x~ = x^ when the
    # teacher's eps does not depend on its input (the DDIM ODE is then exact in one step)
    const = lambda x, tt: jnp.full_like(x, 0.3)
    z_end_c = dl.teacher_two_step(const, sch, z_t, t, t_mid, t_end)
    alpha, sigma = dl._alpha_sigma(sch, t, z_t)
    np.testing.assert_allclose(
        np.asarray(dl.student_x0_target(sch, z_t, t, z_end_c, t_end)), np.asarray((z_t - sigma * 0.3) / alpha),
        rtol=1e-4, atol=1e-4,
    )


def test_weightings_and_frozen_teacher():
    """'snr' weighting is the MSE of eps~; 'truncated_snr' is max(SNR, 1) x the x0 MSE; the teacher gets
    no gradient."""
    T = 64
    sch = make_schedule("linear", T, 1e-3, 0.1)
    x0 = jnp.asarray(MU, jnp.float32) + S * jax.random.normal(jax.random.key(1), (32, 2))
    key = jax.random.key(2)

    def loss(w, student_scale, teacher_scale, weighting):
        return dl.distill_loss(
            lambda x, t: student_scale * _toy_eps(x, t), lambda x, t: teacher_scale * _toy_eps(x, t), sch, x0, key,
            4, weighting, return_aux=w,
        )

    _, aux = loss(True, 0.9, 1.0, "x0")
    t, target, student = aux["t"], aux["x0_target"], aux["x0_student"]
    alpha, sigma = dl._coefficients(sch, t)
    snr = np.asarray((alpha / sigma) ** 2)
    err = np.mean(np.square(np.asarray(student - target)), axis=-1)
    np.testing.assert_allclose(float(loss(False, 0.9, 1.0, "x0")), err.mean(), rtol=1e-5)
    truncated = (np.maximum(snr, 1) * err).mean()
    np.testing.assert_allclose(float(loss(False, 0.9, 1.0, "truncated_snr")), truncated, rtol=1e-5)
    z_t = q_sample(sch, x0, t, jax.random.normal(jax.random.split(key)[1], x0.shape))
    eps_err = np.mean(np.square(np.asarray(0.9 * _toy_eps(z_t, t) - dl.student_eps_target(sch, z_t, t, target))), -1)
    np.testing.assert_allclose(float(loss(False, 0.9, 1.0, "snr")), eps_err.mean(), rtol=1e-4)
    d_student, d_teacher = jax.grad(lambda a, b: loss(False, a, b, "truncated_snr"), argnums=(0, 1))(0.9, 1.0)
    assert float(d_teacher) == 0.0 and float(d_student) != 0.0
    with pytest.raises(ValueError, match="weighting"):
        loss(False, 0.9, 1.0, "lpips")


# ----------------------------------------------------------------------------- a tiny MLP round


class _MLP(nn.Module):
    T: int

    @nn.compact
    def __call__(self, x, t):
        f = t[:, None].astype(jnp.float32) / self.T * jnp.array([1.0, 2.0, 4.0, 8.0]) * jnp.pi
        h = jnp.concatenate([x, jnp.sin(f), jnp.cos(f)], -1)
        for _ in range(2):
            h = nn.silu(nn.Dense(64)(h))
        return nn.Dense(x.shape[-1])(h)


def test_distillation_round_on_a_tiny_mlp():
    """A 4-step MLP teacher (fitted to the toy's exact eps) distilled into a 2-step student: the loss falls by a
    large factor and the student's 2-step 'distilled' sample approaches the teacher's 4-step one."""
    T, N = 64, 2
    sch = make_schedule("linear", T, 1e-3, 0.1)
    exact = eps_star(sch, MU, S)
    net = _MLP(T)
    predict = lambda p, x, t, cond: net.apply({"params": p}, x, t)  # noqa: E731
    data = lambda key: jnp.asarray(MU, jnp.float32) + S * jax.random.normal(key, (256, 2))  # noqa: E731

    teacher = net.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros((1,), jnp.int32))["params"]
    tx = optax.adam(3e-3)

    @jax.jit
    def fit_step(p, o, key):
        k1, k2, k3 = jax.random.split(key, 3)
        x0 = data(k1)
        t = jax.random.randint(k2, (x0.shape[0],), 0, T)
        x_t = q_sample(sch, x0, t, jax.random.normal(k3, x0.shape))
        g = jax.grad(lambda p: jnp.mean((predict(p, x_t, t, None) - exact(x_t, t)) ** 2))(p)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o

    o = tx.init(teacher)
    for i in range(600):
        teacher, o = fit_step(teacher, o, jax.random.key(i))

    stx = optax.adam(1e-3)
    state = initial_student_state(teacher, stx, ema=False)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(teacher)))
    step = jax.jit(make_distill_step(predict, sch, N, stx, 0, keys=("x",)))
    frozen = {"teacher": teacher}
    losses = []
    for i in range(300):
        state, m = step(state, {"x": data(jax.random.key(1000 + i))}, frozen)
        losses.append(float(m["loss"]))
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < first / 20, (first, last)
    assert int(state.step) == 300

    x_T = jax.random.normal(jax.random.key(7), (512, 2))

    def run(p, n):
        spec = SamplerSpec(name="distilled", steps=n)
        return np.asarray(sample(lambda x, t: predict(p, x, t, None), sch, x_T.shape, jax.random.key(0), spec, x_T=x_T))

    ref = run(teacher, 2 * N)
    rms = lambda a: float(np.sqrt(np.mean((a - ref) ** 2)))  # noqa: E731
    teacher_n, student_n = rms(run(teacher, N)), rms(run(state.params, N))
    assert student_n < teacher_n / 5, (student_n, teacher_n)


# ----------------------------------------------------------------------------- the sampler and the registry


def test_distilled_sampler_is_deterministic_ddim_on_the_students_grid():
    T = 50
    sch = make_schedule("ldm_linear", T)
    key = jax.random.key(4)
    for n in (1, 3, 25):
        spec = SamplerSpec(name="distilled", steps=n)
        got = jax.jit(lambda k, spec=spec: sample(_toy_eps, sch, (3, 2), k, spec))(key)
        grid = tuple(int(t) for t in distilled_timesteps(T, n))
        ddim = jax.jit(lambda k, grid=grid: sample(_toy_eps, sch, (3, 2), k, SamplerSpec(name="ddim", steps=grid)))(key)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(ddim))
        loop = sample_loop(_toy_eps, sch, (3, 2), key, spec, jit_step=True)
        np.testing.assert_allclose(np.asarray(got), np.asarray(loop), rtol=1e-5, atol=1e-5)


def test_registry_names_errors_and_options():
    assert sampler_names() == ("ddpm", "ddim", "dpmpp_2m", "dpmpp_3m", "distilled")
    assert get_sampler("distilled").options == ("steps", "clip_x0")
    assert registry.readers("eta") == ("ddim",)
    sch = make_schedule("ldm_linear", 50)
    with pytest.raises(ValueError) as e:
        check_sampler(SamplerSpec(name="euler"), 50)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("Unknown sampler 'euler'") and all(n in msg for n in sampler_names())
    for steps in (None, (40, 20)):
        with pytest.raises(ValueError, match="'distilled' needs steps=N"):
            sample(_toy_eps, sch, (2, 2), jax.random.key(0), SamplerSpec(name="distilled", steps=steps))
    with pytest.raises(ValueError, match="steps must be in"):
        check_sampler(SamplerSpec(name="distilled", steps=51), 50)
    with pytest.raises(ValueError, match="eta=0.5 only applies to sampler='ddim'"):
        check_sampler(SamplerSpec(name="distilled", steps=5, eta=0.5), 50)
    with pytest.raises(ValueError, match="only to sampler='dpmpp_3m'"):
        check_sampler(SamplerSpec(name="distilled", steps=5, corrector=1), 50)
    # the config section: --config.sampler.name=distilled --config.sampler.steps=N (spacing is not read)
    check_sampler(SamplerSpec.of(common.sampler("distilled", 4).to_dict()), 1000)
    with pytest.raises(ValueError, match="needs steps"):
        check_sampler(SamplerSpec.of(common.sampler("distilled").to_dict()), 1000)
    with pytest.raises(ValueError, match="unknown option"):
        registry.SamplerEntry("x", lambda *a: None, options=("gamma",))


def test_a_new_sampler_is_one_registered_function(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_sampler("identity", options=("steps",))
    def _identity(eps_fn, schedule, spec, x_T, key_chain):
        return x_T, lambda x, i: (x, None), jnp.arange(1), lambda x: x

    assert "identity" in sampler_names()
    x_T = jnp.ones((2, 2))
    np.testing.assert_array_equal(sample(_toy_eps, make_schedule("ldm_linear", 10), (2, 2), jax.random.key(0),
                                         SamplerSpec(name="identity"), x_T=x_T), x_T)
    with pytest.raises(ValueError, match="eta"):
        check_sampler(SamplerSpec(name="identity", eta=1.0), 10)
    with pytest.raises(ValueError, match="already registered"):
        register_sampler("identity")(_identity)


def test_distilled_sampler_compiles_once(compile_count, scan_lengths):
    """One jitted function whose chain is one scan: new noise and keys of the same shape do not recompile."""
    sch = make_schedule("ldm_linear", 64)
    spec = SamplerSpec(name="distilled", steps=4)
    fn = jax.jit(lambda x_T, key: sample(_toy_eps, sch, x_T.shape, key, spec, x_T=x_T))
    assert scan_lengths(jax.make_jaxpr(fn)(jnp.zeros((4, 3)), jax.random.key(0)).jaxpr) == [4]
    batches = [jax.random.normal(jax.random.key(i), (4, 3)) for i in range(3)]
    jax.block_until_ready(fn(batches[0], jax.random.key(0)))
    compile_count.reset()
    for i, x in enumerate(batches[1:], 1):
        out = fn(x, jax.random.key(i))
    jax.block_until_ready(out)
    assert compile_count.count == 0, f"{compile_count.count} recompilations of the distilled sampler"
    assert out.shape == (4, 3)


# ----------------------------------------------------------------------------- the CASC stage


def _casc_tiny(tmp_rounds=2):  # T = 10; the first teacher on an 8-step grid: students of 4 and 2 steps
    from configs import casc_base

    c = casc_base.base_config(preset="smoke")
    c.autoencoder.update(ch=8, num_codes=32)
    c.unet.update(ch=16, head_dim=16)
    c.diffusion.num_timesteps = 10
    c.train.update(batch_size=4, log_every=2, checkpoint_every=2)
    c.train.stage1.update(num_steps=2, lpips_weight=0.0, disc_start=-1)
    c.train.stage2.update(num_steps=2)
    c.train.distill.update(rounds=tmp_rounds, num_steps=2, teacher_steps=8)
    return c


def test_casc_distill_stage_runs_resumes_and_loads(tmp_path, progress):
    """The smoke preset, shrunk: stage 1, stage 2, then 2 rounds (8 -> 4 -> 2 steps on T = 10) of 2 steps
    each; a rerun trains nothing, and load_trained_params gives the sampled round's student."""
    from casc_jax.casc import train as casc_train
    from casc_jax.casc.system import build_casc

    c = _casc_tiny()
    c.sampler.update(name="distilled", steps=2)
    assert casc_train.distill_rounds(c) == (4, 2) and casc_train.distilled_round(c) == 2
    params = casc_train.train_casc(c, str(tmp_path))
    for r in (1, 2):
        assert f"[distill{r}] training steps 0 -> 2" in progress.lines
        assert os.path.isdir(tmp_path / f"distill{r}" / "checkpoints")
    assert set(params) == {"autoencoder", "cond_encoder", "can", "unet"}
    loaded, source = casc_train.load_trained_params(c, str(tmp_path))
    assert "distill2 step 2" in source
    leaves = lambda tree: [np.asarray(x) for x in jax.tree.leaves(tree)]  # noqa: E731
    for a, b in zip(leaves(params), leaves(loaded), strict=True):
        np.testing.assert_array_equal(a, b)
    progress.clear()
    again = casc_train.train_casc(c, str(tmp_path))
    assert any(line.startswith("[distill2] already trained") for line in progress.lines)
    for a, b in zip(leaves(params), leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)
    # the student runs as the 'distilled' sampler through the receiver
    model = build_casc(c)
    c_hat = jnp.zeros((2,) + model.condition_shape)
    out = jax.jit(lambda p, k: model.receive(p, c_hat, k, c.sampler.to_dict()))(params, jax.random.key(0))
    assert out.shape == (2,) + model.image_shape and bool(jnp.all(jnp.isfinite(out)))
    # the stage-2 teacher is unchanged and is what a non-distilled sampler loads
    c.sampler.update(name="ddim", steps=3)
    teacher, _ = casc_train.load_trained_params(c, str(tmp_path))
    assert not all(np.array_equal(a, b) for a, b in zip(leaves(teacher["unet"]), leaves(params["unet"])))
    np.testing.assert_array_equal(leaves(teacher["cond_encoder"])[0], leaves(params["cond_encoder"])[0])
    # --mode=quality's students: every round found in the workdir, also by a config that trains none itself
    # (rounds 0: the cpu preset), from teacher_steps
    students = casc_train.trained_students(c, str(tmp_path))
    assert list(students) == [4, 2] and set(students[2]) == {"can", "unet"}
    for a, b in zip(leaves(students[2]), leaves({k: params[k] for k in ("can", "unet")}), strict=True):
        np.testing.assert_array_equal(a, b)
    assert list(casc_train.trained_students(_casc_tiny(tmp_rounds=0), str(tmp_path))) == [4, 2]
    assert casc_train.trained_students(c, str(tmp_path / "elsewhere")) == {}
    # a round not trained yet is a clear FileNotFoundError, not random or teacher weights
    c1 = _casc_tiny(tmp_rounds=3)
    c1.sampler.update(name="distilled", steps=1)
    with pytest.raises(FileNotFoundError, match=r"student of round 3 .*distill3/checkpoints.*Train it first"):
        casc_train.load_trained_params(c1, str(tmp_path))
    # the reproduction's distillation job: a 'train' of the trained workdir with more rounds and no sweep
    # trains only the new round
    from casc_jax.casc import run

    progress.clear()
    c3 = _casc_tiny(tmp_rounds=3)  # 8 -> 4 -> 2 -> 1
    c3.train.evaluate = False
    assert run.MODES["train"](c3, str(tmp_path), {}) == {}
    assert any(line.startswith("[stage2] already trained") for line in progress.lines)
    assert any(line.startswith("[distill2] already trained") for line in progress.lines)
    assert "[distill3] training steps 0 -> 2" in progress.lines and not (tmp_path / "eval").exists()
    assert list(casc_train.trained_students(_casc_tiny(tmp_rounds=0), str(tmp_path))) == [4, 2, 1]


def test_casc_distilled_sampler_needs_a_trained_round():
    from casc_jax.casc import train as casc_train

    c = _casc_tiny(tmp_rounds=0)
    c.sampler.update(name="distilled", steps=4)
    with pytest.raises(ValueError, match="4-step student"):
        casc_train.distilled_round(c)
    c.train.distill.rounds = 1
    assert casc_train.distilled_round(c) == 1
    c.train.update(distill=dict(c.train.distill.to_dict(), rounds=2, teacher_steps=None))
    with pytest.raises(ValueError, match="odd"):  # T = 10 -> 5 -> 2: round 2's teacher would not nest
        casc_train.distill_rounds(c)


# ----------------------------------------------------------------------------- DiffSC's stage (the same toolkit)


def test_diffsc_distill_stage_runs_loads_and_samples(tmp_path, progress):
    """A tiny DiffSC: DeepJSCC, the U-Net, then 2 rounds (4 -> 2 -> 1 steps on T = 4) of 2 steps each through
    the shared rounds; load_trained_params gives the sampled round's student, which the receiver runs."""
    from casc_jax.casc.baselines import build_diffsc
    from casc_jax.casc.baselines import train as baselines_train
    from configs import deepjscc_base

    c = deepjscc_base.diffsc_config(preset="smoke")
    c.diffsc.unet.update(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), head_dim=8)
    c.diffusion.num_timesteps = 4
    c.deepjscc.filters = (4, 8, 8, 8)
    c.train.update(batch_size=4, log_every=2, checkpoint_every=2)
    c.train.deepjscc.update(num_steps=2)
    c.train.diffsc.update(num_steps=2, warmup_steps=0)
    c.train.distill.update(rounds=2, num_steps=2)
    c.sampler.update(name="distilled", steps=1)
    params = baselines_train.train_baseline(c, str(tmp_path))
    for r in (1, 2):
        assert f"[distill{r}] training steps 0 -> 2" in progress.lines
    loaded, source = baselines_train.load_trained_params(c, str(tmp_path))
    assert "distilled student distill2 step 2" in source
    leaves = lambda tree: [np.asarray(x) for x in jax.tree.leaves(tree)]  # noqa: E731
    for a, b in zip(leaves(params), leaves(loaded), strict=True):
        np.testing.assert_array_equal(a, b)
    c.sampler.update(name="ddim", steps=2)
    teacher, _ = baselines_train.load_trained_params(c, str(tmp_path))
    assert not all(np.array_equal(a, b) for a, b in zip(leaves(teacher["unet"]), leaves(params["unet"])))
    model = build_diffsc(c)
    y = jnp.zeros((2, *model.deepjscc.latent_shape))
    out = jax.jit(lambda p, k: model.receive(p, y, k, {"name": "distilled", "steps": 1}))(params, jax.random.key(0))
    assert out.shape == (2, 32, 32, 3) and bool(jnp.all(jnp.isfinite(out)))


def test_launcher_refuses_distilled_without_a_stage_or_round():
    import ml_collections

    from casc_jax import cli

    c = ml_collections.ConfigDict(dict(system="toy", sampler=dict(name="distilled", steps=2), train=dict(),
                                       diffusion=dict(num_timesteps=10)))
    with pytest.raises(cli.UserError, match="system 'toy' has no distillation stage"):
        cli.check_distilled(c)
    c.train.distill = dict(rounds=1, teacher_steps=8)
    with pytest.raises(cli.UserError, match="2-step student"):
        cli.check_distilled(c)  # round 1 of an 8-step teacher: a 4-step student
    c.sampler.steps = 4
    cli.check_distilled(c)
    c.sampler.name = "ddim"
    c.train = dict()
    cli.check_distilled(c)  # not distilled: nothing to check
