"""CASC's two-stage training (section III-E).

Stage 1: the semantic autoencoder with LDM's VQ loss: L1 + LPIPS + codebook/commitment, and from
`disc_start` on a PatchGAN hinge loss weighted adaptively by the decoder's last-layer gradients.
Stage 2: the autoencoder frozen; f, the CAN and the U-Net trained with L_denoiser (eq. 10) through
the channel at an SNR drawn per example from the training set {5, 10, 15, 20} dB.

`train.grad_groups` > 0 makes stage 2's gradients, hence its parameters, the same on any device count
that divides it (`parallel.value_and_grad`). Stage 1 keeps the plain all-reduce: its adaptive GAN weight is
a ratio of whole-batch gradient norms, which per-group gradients do not give without a second pass.

Progressive distillation (optional, `train.distill.rounds` > 0; Salimans & Ho 2022, `train.distill`): round r
distils its teacher (round 1: stage 2's EMA denoiser on `teacher_steps`, default T steps; round r: round r-1's
EMA student) into a student of half the steps, the CAN and U-Net only (f, the transmitter, stays stage 2's).
`--config.sampler.name=distilled --config.sampler.steps=N` samples the round whose student has N steps.

Each stage checkpoints into WORKDIR/<stage>/checkpoints (rounds: WORKDIR/distill<r>) and resumes from there when rerun.
The autoencoder does not depend on the CR or the CAN, so `train.stage1.workdir` may name another
CASC workdir whose trained stage 1 is used as it is (CR 1/96 and the no-CAN ablation reuse the
autoencoder of CR 1/48 in the CPU reproduction); that config's `autoencoder` section must match.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from casc_jax import data as data_lib
from casc_jax.casc.autoencoder import decoder_head
from casc_jax.casc.discriminator import PatchGAN, adaptive_weight, hinge_d_loss
from casc_jax.casc.system import CASC, STAGE2_PARTS, build_casc
from casc_jax.diffusion import distill as distill_lib
from casc_jax.metrics.lpips import LPIPS, load_lpips_params
from casc_jax.train import distill as distill_train
from casc_jax.train import loop, parallel

log = logging.getLogger(__name__)

STAGES = ("stage1", "stage2")
DISTILL_PARTS = ("can", "unet")  # a distilled student: the receiver's denoiser; f (the transmitter) is frozen


# -- stage 1 --------------------------------------------------------------------------------------
def stage1_parts(model: CASC, cfg: ml_collections.ConfigDict):
    """Discriminator, LPIPS net and weights used by the stage-1 loss (None where disabled)."""
    disc = PatchGAN(num_layers=cfg.disc_layers) if cfg.disc_start >= 0 else None
    lpips_vars = load_lpips_params(cfg.lpips_net) if cfg.lpips_weight > 0 else None
    return disc, lpips_vars


def stage1_grads(ae, cfg, disc, lpips, params, d_params, x, key, lpips_vars, active):
    """Gradients of LDM's stage-1 generator loss w.r.t. the autoencoder `params`, in one backward pass.

    loss = nll + lambda g_loss + w_cb codebook, nll = |x - x_hat| + w_p LPIPS, g_loss = -mean D(x_hat) and
    lambda = ||grad_L nll|| / (||grad_L g_loss|| + 1e-4) (`adaptive_weight`, times `active`) from VJPs of the
    decoder's last layer L alone (LDM takes both gradients w.r.t. L's weights). lambda is a constant of the
    backward pass (stop_gradient), so the whole gradient is one pullback of d_nll + lambda d_gan.
    Returns (grads, x_hat, metrics) with nll, codebook and, with a discriminator, g_loss and d_weight.
    """

    def features(p):
        h, codebook_loss, _ = ae.apply({"params": p}, x, train=True, rngs={"dropout": key}, method=ae.features)
        return h, codebook_loss

    (h, codebook_loss), pullback = jax.vjp(features, params)
    x_hat, head_pullback = jax.vjp(decoder_head, params["decoder"]["conv_out"], h)

    def nll_fn(x_hat):  # rec = |x - x_hat| + w_p LPIPS(x, x_hat), averaged (LDM's nll)
        rec = jnp.mean(jnp.abs(x - x_hat))
        if lpips_vars is not None:
            rec = rec + cfg.lpips_weight * jnp.mean(lpips.apply(lpips_vars, x, x_hat))
        return rec

    nll, d_x_hat = jax.value_and_grad(nll_fn)(x_hat)
    metrics = {"nll": nll, "codebook": codebook_loss}
    if disc is not None:
        g_loss, d_gan = jax.value_and_grad(lambda xh: -jnp.mean(disc.apply({"params": d_params}, xh)))(x_hat)
        last = lambda ct: head_pullback(ct)[0]["kernel"]  # noqa: E731  (grad w.r.t. L's kernel only)
        weight = adaptive_weight(last(d_x_hat), last(d_gan), cfg.disc_weight) * active
        d_x_hat = d_x_hat + weight * d_gan
        metrics.update(g_loss=g_loss, d_weight=weight)
    d_head, d_h = head_pullback(d_x_hat)
    (grads,) = pullback((d_h, jnp.asarray(cfg.codebook_weight, codebook_loss.dtype)))
    grads = dict(grads, decoder=dict(grads["decoder"], conv_out=d_head))
    return grads, x_hat, metrics


def make_stage1_step(
    model: CASC, cfg, disc: PatchGAN | None, tx, disc_tx, seed: int, grads_fn: Callable = stage1_grads
) -> Callable:
    """(state, batch, lpips_vars) -> (state, metrics); pure, to be jitted data-parallel.

    `grads_fn` has `stage1_grads`'s signature (`casc_jax.tools.bench_hotpaths` times the former two-pass form).
    """
    ae = model.autoencoder
    lpips = LPIPS(cfg.lpips_net)

    def step(state: loop.TrainState, batch, lpips_vars):
        x = batch["image"]
        key = jax.random.fold_in(jax.random.key(seed), state.step)
        active = (state.step >= cfg.disc_start).astype(jnp.float32)
        d_params = state.extra["disc_params"] if disc is not None else None
        grads, x_hat, metrics = grads_fn(ae, cfg, disc, lpips, state.params, d_params, x, key, lpips_vars, active)
        extra = state.extra
        if disc is not None:

            def d_loss_fn(p):
                real = disc.apply({"params": p}, x)
                fake = disc.apply({"params": p}, jax.lax.stop_gradient(x_hat))
                return active * hinge_d_loss(real, fake)

            d_loss, d_grads = jax.value_and_grad(d_loss_fn)(d_params)
            d_updates, d_opt = disc_tx.update(d_grads, extra["disc_opt_state"], d_params)
            extra = {"disc_params": optax.apply_updates(d_params, d_updates), "disc_opt_state": d_opt}
            metrics["d_loss"] = d_loss
        weight, g_loss = metrics.get("d_weight", 0.0), metrics.get("g_loss", 0.0)
        loss = metrics["nll"] + weight * g_loss + cfg.codebook_weight * metrics["codebook"]
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new = state.replace(
            step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state, extra=extra
        )
        finite = loop.all_finite(loss, grads)
        metrics.update(loss=loss, finite=finite)
        return loop.guarded(new, state.replace(step=state.step + 1), finite), metrics

    return step


# -- stage 2 --------------------------------------------------------------------------------------
def make_stage2_step(model: CASC, cfg, train_snrs, tx, seed: int, grad_groups: int = 0) -> Callable:
    """(state, batch, autoencoder_params) -> (state, metrics): L_denoiser through the channel, with EMA
    (`loop.make_loss_step`; `grad_groups` > 0: the device-count-independent gradient)."""

    def loss_fn(trainable, ae_params, b, key):
        return model.denoiser_loss(dict(trainable, autoencoder=ae_params), b["image"], key, b["snr"])

    return loop.make_loss_step(loss_fn, tx, seed + 1, train_snrs, ema_decay=cfg.ema_decay, grad_groups=grad_groups)


# -- progressive distillation ----------------------------------------------------------------------
# The config-level pieces are the shared toolkit's (`train.distill`): every system with a distill stage uses them.
distill_rounds = distill_train.config_rounds
distilled_round = distill_train.sampled_round
distill_stage = distill_train.stage_name


def distill_predict(model: CASC):
    """predict(params, z_t, t, c_hat) -> eps_hat for a student or teacher {'can', 'unet'}: its own CAN weights."""
    return lambda p, z_t, t, c_hat: model.eps(p, z_t, t, c_hat, model.dynamic_weights(p, c_hat))


def make_distill_stage_step(model: CASC, cfg, train_snrs, steps: int, tx, seed: int, grad_groups: int = 0):
    """(state, batch, frozen) -> (state, metrics) of one round (`distill_train.make_distill_step`): x0 = the
    frozen autoencoder's Z, the condition C_hat through the channel at a per-example training SNR; `frozen` is
    {'teacher': {'can', 'unet'}, 'aux': {'autoencoder', 'cond_encoder'}}."""

    def prepare(aux, b, key):
        z0 = model.encode(aux, b["image"])
        return z0, model.channel(key, model.condition(aux, z0), b["snr"])

    return distill_train.make_distill_step(
        distill_predict(model), model.schedule, steps, tx, seed, weighting=cfg.get("weighting", "truncated_snr"),
        prepare=prepare, train_snrs=train_snrs, ema_decay=cfg.get("ema_decay"), grad_groups=grad_groups,
    )


# -- orchestration --------------------------------------------------------------------------------
def _optimizer(stage_cfg, global_batch: int):
    """Adam (stage 1, as LDM's autoencoder) or AdamW when `weight_decay` is set (stage 2, as LDM's denoiser)."""
    lr = loop.learning_rate(stage_cfg, global_batch)
    return loop.adam(lr, stage_cfg.adam_b1, stage_cfg.adam_b2, weight_decay=stage_cfg.get("weight_decay", 0.0))


def initial_states(model: CASC, config, key) -> dict[str, loop.TrainState]:
    """Fresh stage-1 and stage-2 states (also used, abstractly, as restore targets)."""
    params = model.init(key)
    b1, b2 = (loop.stage_batch_size(config.train, s) for s in STAGES)
    s1, s2 = config.train.stage1, config.train.stage2
    extra = None
    if s1.disc_start >= 0:
        disc = PatchGAN(num_layers=s1.disc_layers)
        d_params = disc.init(jax.random.fold_in(key, 1), jnp.zeros((1,) + model.image_shape))["params"]
        extra = {"disc_params": d_params, "disc_opt_state": _optimizer(s1, b1).init(d_params)}
    ae = params["autoencoder"]
    trainable = {k: params[k] for k in STAGE2_PARTS}
    return {
        "stage1": loop.TrainState(jnp.int32(0), ae, _optimizer(s1, b1).init(ae), None, extra),
        "stage2": loop.TrainState(
            jnp.int32(0), trainable, _optimizer(s2, b2).init(trainable), jax.tree.map(jnp.copy, trainable)
        ),
    }


def abstract_states(model: CASC, config, mesh) -> dict[str, loop.TrainState]:
    """Shapes, dtypes and (replicated) shardings of the stage states, without allocating them."""
    return parallel.abstract_replicated(lambda k: initial_states(model, config, k), mesh)


def abstract_student(model: CASC, config, mesh) -> loop.TrainState:
    """The shapes and shardings of a distillation round's state (every round's is the same)."""
    d = config.train.distill
    tx = _optimizer(d, loop.stage_batch_size(config.train, "distill"))

    def init(key):
        params = model.init(key)
        return distill_train.initial_student_state(
            {k: params[k] for k in DISTILL_PARTS}, tx, ema=d.get("ema_decay") is not None
        )

    return parallel.abstract_replicated(init, mesh)


def train_casc(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Run (or resume) stage 1, stage 2 and any distillation rounds; return the full parameter tree (EMA
    denoiser weights; with sampler 'distilled', those of the student it runs)."""
    model = build_casc(config)
    mesh = parallel.make_mesh()
    batch = {s: loop.stage_batch_size(config.train, s) for s in STAGES}
    local_batch = {s: parallel.check_batch_size(batch[s], mesh) for s in STAGES}
    examples = data_lib.num_examples(config.data, "train")
    writer = loop.make_writer(workdir)
    states = parallel.init_replicated(lambda k: initial_states(model, config, k), jax.random.key(config.seed), mesh)

    rounds = distill_rounds(config)
    final_round = distilled_round(config)  # fail before training when the sampler names no trained round
    if rounds:
        batch["distill"] = loop.stage_batch_size(config.train, "distill")
        local_batch["distill"] = parallel.check_batch_size(batch["distill"], mesh)

    total = {s: loop.num_steps(config.train[s], examples, batch[s]) for s in batch}
    run_stage = loop.stage_runner(
        workdir=workdir, train_cfg=config.train, mesh=mesh, writer=writer, local_batch=local_batch,
        total_steps=total, make_batches=lambda local, seed, start: data_lib.make_dataset(
            config.data, "train", data_lib.Stream.training(local, seed, start)),
    )

    def run(name, step, const, seed, initial_state=None, batch_of=None):
        return run_stage(name, step, const, seed, states[name] if initial_state is None else initial_state, batch_of)

    # Stage 1: the autoencoder (trained here, or taken from `train.stage1.workdir`).
    s1 = config.train.stage1
    external = stage1_workdir(config, workdir)
    if external is not None:
        abstract = abstract_states(model, config, mesh)["stage1"]
        step, state1 = loop.restore_stage(external, "stage1", config.train, abstract)
        if state1 is None:
            raise FileNotFoundError(
                f"train.stage1.workdir={external!r} holds no trained autoencoder ({external}/stage1/checkpoints). "
                "Train that CASC job first, or leave train.stage1.workdir empty to train stage 1 here."
            )
        log.info(f"[stage1] using the autoencoder of {external} (step {step})")
    else:
        disc, lpips_vars = stage1_parts(model, s1)
        disc_tx = _optimizer(s1, batch["stage1"]) if disc is not None else None
        step1 = make_stage1_step(model, s1, disc, _optimizer(s1, batch["stage1"]), disc_tx, config.seed)
        lpips_vars = parallel.replicate(lpips_vars, mesh) if lpips_vars is not None else None
        state1 = run("stage1", step1, lpips_vars, config.seed)

    # Stage 2: the denoiser, the CAN and the condition-channel encoder, autoencoder frozen.
    s2 = config.train.stage2
    groups = parallel.check_grad_groups(config.train.get("grad_groups", 0), batch["stage2"], mesh.size)
    tx2 = _optimizer(s2, batch["stage2"])
    step2 = make_stage2_step(model, s2, tuple(config.channel.train_snrs), tx2, config.seed, groups)
    state2 = run("stage2", step2, state1.params, config.seed + 1)
    params = dict(state2.ema_params, autoencoder=state1.params)

    # Progressive distillation: each round's student (a copy of its teacher at step 0) is the next teacher.
    d = config.train.get("distill")
    aux = {"autoencoder": state1.params, "cond_encoder": state2.ema_params["cond_encoder"]}
    teacher = {k: state2.ema_params[k] for k in DISTILL_PARTS}
    if rounds:
        groups_d = parallel.check_grad_groups(config.train.get("grad_groups", 0), batch["distill"], mesh.size)
        tx_d = _optimizer(d, batch["distill"])

        def make_step(steps, r):
            log.info(f"[{distill_stage(r)}] distilling a {2 * steps}-step teacher into a {steps}-step student")
            return make_distill_stage_step(
                model, d, tuple(config.channel.train_snrs), steps, tx_d, config.seed + 1 + r, groups_d
            )

        def run_round(r, step, teacher, initial):
            frozen = {"teacher": teacher, "aux": aux}
            initial = parallel.replicate(initial, mesh)
            return run(distill_stage(r), step, frozen, config.seed + 1 + r, initial, "distill")

        students = distill_train.run_rounds(
            teacher, rounds, make_step, run_round, tx_d, ema=d.get("ema_decay") is not None
        )
        if final_round is not None:
            params = dict(params, **students[final_round - 1])
    writer.close()
    return params


def trained_students(config, workdir: str) -> dict[int, dict]:
    """{N: the EMA student {'can', 'unet'} of N steps} for every distillation round trained in `workdir`
    (WORKDIR/distill<r>), in round order; empty when it holds none.

    The rounds are `train.distill.rounds`'s or, when that is 0 (a preset that trains none itself, as `cpu`), as
    many as the workdir holds, from `train.distill.teacher_steps` (the reproduction's distillation job trains
    them with --config.train.distill.rounds; its `--mode=quality` then finds them without the flag).
    """
    found = 0
    while os.path.isdir(os.path.join(workdir, distill_stage(found + 1), "checkpoints")):
        found += 1
    if not found:
        return {}
    d = config.train.distill
    rounds = distill_rounds(config) if d.get("rounds") else distill_lib.round_steps(
        d.get("teacher_steps") or config.diffusion.num_timesteps, found
    )
    model = build_casc(config)
    abstract = abstract_student(model, config, parallel.make_mesh())
    students = {}
    for r, steps in enumerate(rounds[:found], 1):
        students[steps] = distill_train.restore_student(workdir, config.train, r, abstract)[2]
    return students


def stage1_workdir(config, workdir: str) -> str | None:
    """`train.stage1.workdir` as an absolute path, or None when this job trains its own autoencoder."""
    source = config.train.stage1.get("workdir") or ""
    if not source or os.path.abspath(source) == os.path.abspath(workdir):
        return None
    return os.path.abspath(source)


def load_trained_params(config, workdir: str, *, allow_random: bool = False) -> tuple[dict, str]:
    """The trained parameters in `workdir` (EMA denoiser) and a description of where they came from.

    Without a finished stage-2 checkpoint: random weights when `allow_random` (the benchmark), else
    FileNotFoundError saying how to train first.
    """
    model = build_casc(config)
    mesh = parallel.make_mesh()
    abstract = abstract_states(model, config, mesh)
    stage1_dir = stage1_workdir(config, workdir) or workdir
    step1, state1 = loop.restore_stage(stage1_dir, "stage1", config.train, abstract["stage1"])
    step2, state2 = loop.restore_stage(workdir, "stage2", config.train, abstract["stage2"])
    r = distilled_round(config)
    if state1 is not None and state2 is not None and r is not None:
        name, step_d, student = distill_train.restore_student(
            workdir, config.train, r, abstract_student(model, config, mesh)
        )
        params = dict(state2.ema_params, autoencoder=state1.params, **student)
        return params, f"distilled student (stage 1 step {step1}, stage 2 step {step2}, {name} step {step_d})"
    if state1 is not None and state2 is not None:
        params = dict(state2.ema_params, autoencoder=state1.params)
        return params, f"trained checkpoint (stage 1 step {step1}, stage 2 step {step2})"
    if allow_random:
        log.info(f"no trained checkpoint in {workdir}: using random weights")
        return parallel.init_replicated(model.init, jax.random.key(config.seed), mesh), "random weights"
    raise FileNotFoundError(
        f"no trained CASC checkpoint in {workdir} (expected {workdir}/stage1 and {workdir}/stage2). "
        "Train first: python launch.py --config=... --workdir=... --mode=train"
    )
