"""Training of the CASC paper's baselines: DeepJSCC (MSE or LPIPS loss) and DiffSC.

Stages; each checkpoints into WORKDIR/<stage>/checkpoints and resumes from there when rerun:
  'deepjscc'  DeepJSCC's encoder and decoder end to end through the channel, with
              `config.train.deepjscc.loss` 'mse' (the paper's MSE on [0, 1] pixels), 'lpips' (AlexNet or VGG
              LPIPS v0.1, its frozen weights passed to the jitted step as a replicated argument) or
              'mse_lpips' (MSE + `lpips_weight` x LPIPS).
  'diffsc'    (system 'diffsc') the DiffSC U-Net's L_simple on top of the frozen DeepJSCC of stage
              'deepjscc'; only the U-Net is trained, with an EMA of its weights (used for evaluation).
  'distill<r>' (system 'diffsc', `train.distill.rounds` > 0) progressive distillation of the EMA U-Net,
              the shared toolkit's rounds (`casc_jax.train.distill`, as CASC's): round r's student learns one
              DDIM step per two of its teacher's, DeepJSCC frozen; `--config.sampler.name=distilled
              --config.sampler.steps=N` samples the round whose student has N steps.
Every step draws one SNR per example, uniformly from `config.channel.train_snrs`.

Where DiffSC's DeepJSCC comes from. By default the DiffSC job trains it itself as its first stage
'deepjscc' (DeepJSCC-MSE, `config.train.deepjscc`), so every method is one command. With
`config.diffsc.deepjscc_workdir` set, the DiffSC job instead loads the 'deepjscc' stage of that workdir,
e.g. the DeepJSCC-MSE job of the comparison, so DiffSC refines exactly the DeepJSCC it is compared with.
That workdir must come from a config with the same `cr`, `deepjscc.*` and `train.deepjscc` optimiser
fields (the shipped configs share them); otherwise restoring raises `CheckpointError`.

Optimiser (both stages): clip_by_global_norm(clip_norm, inf when 0) -> Adam(b1, b2) -> learning rate with
a linear warm-up over `warmup_steps` and a step decay by `lr_decay_factor` after `lr_decay_at` x the
stage's steps. The chain is the same for every setting, so a checkpoint's tree never depends on them.
"""

from __future__ import annotations

import functools
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import optax

from casc_jax import data as data_lib
from casc_jax.casc.baselines import DeepJSCC, DiffSC, build_deepjscc, build_diffsc
from casc_jax.casc.baselines.deepjscc import LPIPS_LOSSES
from casc_jax.metrics.lpips import LPIPS, load_lpips_params
from casc_jax.train import distill as distill_train
from casc_jax.train import loop, parallel

log = logging.getLogger(__name__)

SYSTEMS = ("deepjscc", "diffsc")
STAGES = {"deepjscc": ("deepjscc",), "diffsc": ("deepjscc", "diffsc")}


def check_system(config) -> str:
    if config.system not in SYSTEMS:
        raise ValueError(f"config.system {config.system!r} is not a baseline; choose one of {SYSTEMS}")
    return config.system


def build_model(config) -> DeepJSCC | DiffSC:
    """The baseline of `config.system`."""
    return build_deepjscc(config) if check_system(config) == "deepjscc" else build_diffsc(config)


# -- optimiser ------------------------------------------------------------------------------------
def lr_schedule(stage_cfg, global_batch: int, total_steps: int):
    """count -> lr: linear warm-up to the base rate, then x lr_decay_factor after lr_decay_at x total_steps."""
    peak = loop.learning_rate(stage_cfg, global_batch)
    warmup = int(stage_cfg.get("warmup_steps", 0))
    decay_at = float(stage_cfg.get("lr_decay_at") or 0.0)
    boundary = int(decay_at * total_steps) if decay_at > 0 else None
    factor = float(stage_cfg.get("lr_decay_factor", 1.0))

    def schedule(count):
        lr = peak * jnp.minimum(1.0, (count + 1.0) / warmup) if warmup > 0 else jnp.float32(peak)
        return lr if boundary is None else jnp.where(count >= boundary, lr * factor, lr)

    return schedule


def optimizer(stage_cfg, global_batch: int, total_steps: int) -> optax.GradientTransformation:
    clip = stage_cfg.get("clip_norm", 0.0) or jnp.inf
    return optax.chain(
        optax.clip_by_global_norm(clip),
        optax.scale_by_adam(stage_cfg.adam_b1, stage_cfg.adam_b2),
        optax.scale_by_learning_rate(lr_schedule(stage_cfg, global_batch, total_steps)),
    )


# -- steps ----------------------------------------------------------------------------------------
def lpips_parts(stage_cfg) -> tuple[LPIPS | None, dict | None]:
    """The LPIPS module and its pretrained variables for the LPIPS losses; (None, None) for 'mse'."""
    if stage_cfg.loss not in LPIPS_LOSSES:
        return None, None
    return LPIPS(stage_cfg.lpips_net), load_lpips_params(stage_cfg.lpips_net)


def make_deepjscc_step(model: DeepJSCC, stage_cfg, train_snrs, tx, seed: int, grad_groups: int = 0):
    """(state, batch, lpips_vars) -> (state, metrics): one step of DeepJSCC's loss (`loop.make_loss_step`)."""
    kind = stage_cfg.loss
    lpips = LPIPS(stage_cfg.lpips_net) if kind in LPIPS_LOSSES else None
    weight = stage_cfg.get("lpips_weight", 1.0)

    def loss_fn(params, lpips_vars, b, key):
        lpips_fn = None if lpips is None else functools.partial(lpips.apply, lpips_vars)
        return model.loss(params, b["image"], key, b["snr"], kind=kind, lpips_fn=lpips_fn, lpips_weight=weight)

    return loop.make_loss_step(loss_fn, tx, seed, train_snrs, grad_groups=grad_groups)


def make_diffsc_step(model: DiffSC, stage_cfg, train_snrs, tx, seed: int, grad_groups: int = 0):
    """(state, batch, deepjscc_params) -> (state, metrics): L_simple for the U-Net, DeepJSCC frozen; EMA."""

    def loss_fn(unet, jscc_params, b, key):
        return model.denoiser_loss({"deepjscc": jscc_params, "unet": unet}, b["image"], key, b["snr"])

    return loop.make_loss_step(
        loss_fn, tx, seed + 1, train_snrs, ema_decay=stage_cfg.ema_decay, grad_groups=grad_groups
    )


def make_diffsc_distill_step(model: DiffSC, cfg, train_snrs, steps: int, tx, seed: int, grad_groups: int = 0):
    """(state, batch, frozen) -> (state, metrics) of one distillation round of DiffSC's U-Net
    (`distill_train.make_distill_step`): x0 = the image, the condition X_jscc from the frozen DeepJSCC through
    the channel at a per-example training SNR; `frozen` is {'teacher': U-Net params, 'aux': DeepJSCC params}."""

    def prepare(jscc_params, b, key):
        frozen = {"deepjscc": jscc_params}
        return b["image"], model.condition(frozen, model.channel(key, model.transmit(frozen, b["image"]), b["snr"]))

    return distill_train.make_distill_step(
        lambda unet, x_t, t, x_jscc: model.eps({"unet": unet}, x_t, t, x_jscc), model.schedule, steps, tx, seed,
        weighting=cfg.get("weighting", "truncated_snr"), prepare=prepare, train_snrs=train_snrs,
        ema_decay=cfg.get("ema_decay"), grad_groups=grad_groups,
    )


def abstract_student(model: DiffSC, config, mesh) -> loop.TrainState:
    """The shapes and shardings of a DiffSC distillation round's state (every round's is the same)."""
    d = config.train.distill
    tx = optimizer(d, loop.stage_batch_size(config.train, "distill"), 1)

    def init(key):
        unet = initial_states(model, config, key)["diffsc"].params
        return distill_train.initial_student_state(unet, tx, ema=d.get("ema_decay") is not None)

    return parallel.abstract_replicated(init, mesh)


# -- states ---------------------------------------------------------------------------------------
def initial_states(model, config, key, total_steps=None) -> dict[str, loop.TrainState]:
    """Fresh states of the system's stages. `total_steps` {stage: n} only sets the lr decay boundary."""
    total_steps = total_steps or {}
    jscc = model if isinstance(model, DeepJSCC) else model.deepjscc
    k_jscc, k_unet = jax.random.split(key)
    params = jscc.init(k_jscc)

    def tx(stage):
        return optimizer(config.train[stage], loop.stage_batch_size(config.train, stage), total_steps.get(stage, 1))

    states = {"deepjscc": loop.TrainState(jnp.int32(0), params, tx("deepjscc").init(params))}
    if isinstance(model, DiffSC):
        unet = model.init(k_unet, params)["unet"]
        states["diffsc"] = loop.TrainState(jnp.int32(0), unet, tx("diffsc").init(unet), jax.tree.map(jnp.copy, unet))
    return states


def abstract_states(model, config, mesh) -> dict[str, loop.TrainState]:
    """Shapes, dtypes and (replicated) shardings of the stage states, without allocating them."""
    return parallel.abstract_replicated(lambda k: initial_states(model, config, k), mesh)


def external_deepjscc_workdir(config, workdir: str) -> str | None:
    """DiffSC's `diffsc.deepjscc_workdir` as an absolute path, or None when DiffSC trains its own DeepJSCC."""
    if config.system != "diffsc":
        return None
    source = config.diffsc.get("deepjscc_workdir") or ""
    if not source or os.path.abspath(source) == os.path.abspath(workdir):
        return None
    return os.path.abspath(source)


def _restore_external_deepjscc(config, source: str, abstract: loop.TrainState) -> dict:
    step, state = loop.restore_stage(source, "deepjscc", config.train, abstract)
    if state is None:
        raise FileNotFoundError(
            f"diffsc.deepjscc_workdir={source!r} holds no trained DeepJSCC (expected {source}/deepjscc/checkpoints). "
            "Train it first (python launch.py --config=configs/deepjscc_mse_cr48.py --workdir=...), or leave "
            "diffsc.deepjscc_workdir empty to train the DeepJSCC inside the DiffSC job."
        )
    log.info(f"[deepjscc] using the DeepJSCC of {source} (step {step})")
    return state.params


# -- orchestration --------------------------------------------------------------------------------
def train_baseline(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Run (or resume) the system's stages; return its parameters.

    DeepJSCC: {'encoder', 'decoder'}. DiffSC: {'deepjscc': {...}, 'unet': EMA weights}.
    """
    system = check_system(config)
    model = build_model(config)
    mesh = parallel.make_mesh()
    examples = data_lib.num_examples(config.data, "train")
    train_snrs = tuple(config.channel.train_snrs)
    stages = STAGES[system]
    external = external_deepjscc_workdir(config, workdir)
    batches = {s: loop.stage_batch_size(config.train, s) for s in stages}
    total = {s: loop.num_steps(config.train[s], examples, batches[s]) for s in stages}
    local = {s: parallel.check_batch_size(batches[s], mesh) for s in stages}
    groups = {s: parallel.check_grad_groups(config.train.get("grad_groups", 0), batches[s], mesh.size) for s in stages}
    states = parallel.init_replicated(
        lambda k: initial_states(model, config, k, total), jax.random.key(config.seed), mesh
    )
    txs = {s: optimizer(config.train[s], batches[s], total[s]) for s in stages}
    writer = loop.make_writer(workdir)

    rounds = distill_train.config_rounds(config) if system == "diffsc" else ()
    final_round = distill_train.sampled_round(config) if system == "diffsc" else None  # fail before training
    if rounds:
        batches["distill"] = loop.stage_batch_size(config.train, "distill")
        total["distill"] = loop.num_steps(config.train.distill, examples, batches["distill"])
        local["distill"] = parallel.check_batch_size(batches["distill"], mesh)

    run_stage = loop.stage_runner(
        workdir=workdir, train_cfg=config.train, mesh=mesh, writer=writer, local_batch=local, total_steps=total,
        make_batches=lambda local_batch, seed, start: data_lib.make_dataset(
            config.data, "train", data_lib.Stream.training(local_batch, seed, start)),
    )

    def run(name, step, const, seed, initial_state=None, batch_of=None):
        return run_stage(name, step, const, seed, states[name] if initial_state is None else initial_state, batch_of)

    try:
        jscc = model if system == "deepjscc" else model.deepjscc
        if external is not None:
            abstract = abstract_states(model, config, mesh)["deepjscc"]
            jscc_params = _restore_external_deepjscc(config, external, abstract)
        else:
            s = config.train.deepjscc
            _, lpips_vars = lpips_parts(s)
            lpips_vars = None if lpips_vars is None else parallel.replicate(lpips_vars, mesh)
            step = make_deepjscc_step(jscc, s, train_snrs, txs["deepjscc"], config.seed, groups["deepjscc"])
            jscc_params = run("deepjscc", step, lpips_vars, config.seed).params
        if system == "deepjscc":
            return jscc_params
        step = make_diffsc_step(model, config.train.diffsc, train_snrs, txs["diffsc"], config.seed, groups["diffsc"])
        state = run("diffsc", step, jscc_params, config.seed + 1)
        params = {"deepjscc": jscc_params, "unet": state.ema_params}
        if rounds:
            d = config.train.distill
            groups_d = parallel.check_grad_groups(config.train.get("grad_groups", 0), batches["distill"], mesh.size)
            tx_d = optimizer(d, batches["distill"], total["distill"])

            def make_step(steps, r):
                log.info(f"[{distill_train.stage_name(r)}] distilling a {2 * steps}-step teacher into a "
                         f"{steps}-step student")
                return make_diffsc_distill_step(model, d, train_snrs, steps, tx_d, config.seed + 1 + r, groups_d)

            def run_round(r, step, teacher, initial):
                frozen = {"teacher": teacher, "aux": jscc_params}
                initial = parallel.replicate(initial, mesh)
                return run(distill_train.stage_name(r), step, frozen, config.seed + 1 + r, initial, "distill")

            students = distill_train.run_rounds(
                state.ema_params, rounds, make_step, run_round, tx_d, ema=d.get("ema_decay") is not None
            )
            if final_round is not None:
                params["unet"] = students[final_round - 1]
        return params
    finally:
        writer.close()


def load_trained_params(config, workdir: str, *, allow_random: bool = False) -> tuple[dict, str]:
    """The trained parameters in `workdir` (DiffSC: EMA U-Net) and a description of where they came from.

    Without finished checkpoints: random weights when `allow_random` (the benchmark), else
    FileNotFoundError saying how to train first.
    """
    system = check_system(config)
    model = build_model(config)
    mesh = parallel.make_mesh()
    abstract = abstract_states(model, config, mesh)
    external = external_deepjscc_workdir(config, workdir)
    jscc_dir = external or workdir
    step_j, state_j = loop.restore_stage(jscc_dir, "deepjscc", config.train, abstract["deepjscc"])
    found = state_j is not None
    if system == "diffsc":
        step_u, state_u = loop.restore_stage(workdir, "diffsc", config.train, abstract["diffsc"])
        found = found and state_u is not None
    if found:
        where = "" if external is None else f" of {external}"
        if system == "deepjscc":
            return state_j.params, f"trained checkpoint (deepjscc step {step_j})"
        source = f"trained checkpoint (deepjscc step {step_j}{where}, diffsc step {step_u}, EMA U-Net)"
        r = distill_train.sampled_round(config)
        if r is None:
            return {"deepjscc": state_j.params, "unet": state_u.ema_params}, source
        name, step_d, student = distill_train.restore_student(
            workdir, config.train, r, abstract_student(model, config, mesh)
        )
        source = source.replace("EMA U-Net)", f"distilled student {name} step {step_d})")
        return {"deepjscc": state_j.params, "unet": student}, source
    if allow_random:
        log.info(f"no trained {system} checkpoint in {workdir}: using random weights")
        return parallel.init_replicated(model.init, jax.random.key(config.seed), mesh), "random weights"
    stages = " and ".join(os.path.join(jscc_dir if s == "deepjscc" else workdir, s) for s in STAGES[system])
    raise FileNotFoundError(
        f"no trained {system} checkpoint in {workdir} (expected {stages}). "
        "Train first: python launch.py --config=... --workdir=... --mode=train"
    )
