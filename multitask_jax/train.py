"""Training of the multi-task system, one stage per task (paper sections IV and V-A).

Both stages use AdamW (lr 1e-4, betas (0.5, 0.999), weight decay 0.01, section V-A) and draw one SNR per
example from `channel.train_snrs`; the channel (AWGN or Rayleigh block fading) is `channel.kind`.

    reconstruction: swin, selection, encoder, receiver_kb, dit   <- L_R (eq. 5, `recon_loss`), end to end
    segmentation:   shared=True:  seg_decoder                    <- L_S (eq. 6, `seg_loss`), with swin,
                                  selection, encoder, receiver_kb frozen at the reconstruction stage's
                                  (deployed) weights from the same workdir
                    shared=False: swin, selection, encoder, receiver_kb, seg_decoder, end to end

Why `shared=True` is the paper preset: the paper's JSCC encoder is unified for both tasks (section III-C)
and the transmitter selects only the feature (f_R or f_S), so one set of transmitter weights must serve
both tasks. The receiver KB is one module too (g_S = r1 is also a term of g_R = r1 + r2), so it is frozen
as well. Training segmentation after reconstruction with those parts frozen keeps the reconstruction path
exactly as trained. `shared=False` trains a separate segmentation chain (used by the smoke preset so that
it runs on its own); a workdir then holds two transmitters, one per task.

The step (`make_loss_step`) and the stage runner (`fit_stage`) take any system's loss function: the
multi-task paper's baselines (multitask_jax.baselines) train with the same loop, SNR draw and optimiser.

Progressive distillation (optional, `train.distill.rounds` > 0, after the reconstruction stage): the shared
toolkit's rounds (`casc_jax.train.distill`, as CASC's and DiffSC's) distil the DiT (the denoiser; transmitter and
receiver KB frozen at the reconstruction stage's deployed weights) into students of half the steps each, into
WORKDIR/distill<r>; `--config.sampler.name=distilled --config.sampler.steps=N` reconstructs with the N-step one.

Each stage checkpoints into WORKDIR/<task>/checkpoints and resumes from there (casc_jax.train.loop).
A shared segmentation stage records the reconstruction step it was trained on and warns when the
reconstruction stage has moved on since.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from casc_jax import data as casc_data
from casc_jax import image_io
from casc_jax.batching import Stream
from casc_jax.train import distill as distill_train
from casc_jax.train import loop, parallel
from multitask_jax import data as mt_data
from multitask_jax.system import MultiTaskSystem, build_multitask
from multitask_jax.tasks import RECONSTRUCTION, SEGMENTATION, check_task

log = logging.getLogger(__name__)

SHARED_PARTS = ("swin", "selection", "encoder", "receiver_kb")
TASK_PARTS = {RECONSTRUCTION: SHARED_PARTS + ("dit",), SEGMENTATION: SHARED_PARTS + ("seg_decoder",)}
CONFIG_FILES = {RECONSTRUCTION: "configs/multitask_recon.py", SEGMENTATION: "configs/multitask_seg.py"}
_SEED_OFFSET = {RECONSTRUCTION: 1, SEGMENTATION: 2}


# -- model and data from the config ----------------------------------------------------------------
def build_model(config: ml_collections.ConfigDict, image_size=None) -> MultiTaskSystem:
    """The system of `config.model` with `config.channel`'s channel, at `image_size` (H, W) if given
    (the parameters do not depend on the image size, so one trained tree serves every size)."""
    cfg = config.model.to_dict()
    cfg["channel"] = dict(kind=config.channel.kind, equalizer=config.channel.equalizer)
    if image_size is not None:
        cfg["image_size"] = tuple(int(s) for s in image_size)
    return build_multitask(cfg)


def image_hw(config) -> tuple[int, int]:
    """(H, W) of `config.model.image_size` (an int S means S x S)."""
    size = config.model.image_size
    return (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)


def data_config(config, task: str, image_size=None) -> dict:
    """`config.data` with the image size of the model (or `image_size`); segmentation needs a square."""
    h, w = image_size or image_hw(config)
    if check_task(task) == SEGMENTATION:
        if h != w:
            raise ValueError(f"segmentation data is square (S x S); model.image_size is {(h, w)}")
        return dict(config.data.to_dict(), image_size=h)
    return dict(config.data.to_dict(), image_size=(h, w))


def make_batches(config, task: str, split: str, stream: Stream, image_size=None):
    """Numpy batches of `task`'s data: {image, valid} (reconstruction) or {image, mask, valid}."""
    make = mt_data.make_reconstruction_dataset if task == RECONSTRUCTION else mt_data.make_segmentation_dataset
    return make(data_config(config, task, image_size), split, stream)


def num_examples(config, task: str, split: str) -> int:
    """Examples in `split` of `task`'s data (only needed when a stage counts epochs)."""
    cfg = data_config(config, task)
    counted = mt_data.num_examples(cfg, split)  # the camvid: and photos: sources
    if counted is not None:
        return counted
    kind, arg = casc_data.parse_source(cfg["source"])
    if kind == "embedded":
        return len(mt_data.load_embedded_voc(8)[2])
    if kind == "folder":
        return len(image_io.list_image_files(arg))
    if task == SEGMENTATION:
        builder = mt_data.voc_builder(cfg.get("data_dir"), cfg.get("manual_dir"), bool(cfg.get("download")))
    else:
        name = mt_data.DIV2K_NAME if arg == "div2k" else arg
        builder = casc_data.tfds_builder(name, cfg.get("data_dir"), bool(cfg.get("download")))
    return builder.info.splits[split].num_examples


# -- stages --------------------------------------------------------------------------------------
def is_shared(config, task: str) -> bool:
    """True when `task` trains on the reconstruction stage's frozen transmitter and receiver KB."""
    return check_task(task) == SEGMENTATION and bool(config.train.segmentation.shared)


def trainable_parts(config, task: str) -> tuple[str, ...]:
    return ("seg_decoder",) if is_shared(config, task) else TASK_PARTS[check_task(task)]


def optimizer(stage_cfg, global_batch: int) -> optax.GradientTransformation:
    """AdamW of section V-A (lr, betas, weight decay from the config)."""
    lr = loop.learning_rate(stage_cfg, global_batch)
    return loop.adam(lr, stage_cfg.b1, stage_cfg.b2, weight_decay=stage_cfg.weight_decay, clip_norm=stage_cfg.clip_norm)


def make_loss_step(
    loss_fn: Callable, stage_cfg, train_snrs, tx, seed: int, grad_groups: int = 0, keys: tuple[str, ...] = ("image",)
) -> Callable:
    """`loop.make_loss_step` for a multi-task system's `loss_fn(params, b, key)`, where `params` is the
    trainable tree merged over the step's `frozen` argument (the parts not trained, or None)."""

    def merged(trainable, frozen, b, key):
        return loss_fn(dict(frozen or {}, **trainable), b, key)

    ema = stage_cfg.get("ema_decay")
    return loop.make_loss_step(merged, tx, seed, train_snrs, ema_decay=ema, grad_groups=grad_groups, keys=keys)


def task_keys(task: str) -> tuple[str, ...]:
    """The batch entries a task's loss reads."""
    return ("image",) if check_task(task) == RECONSTRUCTION else ("image", "mask")


def make_train_step(
    model: MultiTaskSystem, task: str, stage_cfg, train_snrs, tx, seed: int, grad_groups: int = 0
) -> Callable:
    """`make_loss_step` with our system's loss of `task`: L_R (`recon_loss`) or L_S (`seg_loss`)."""
    return make_loss_step(_loss_of(model, task), stage_cfg, train_snrs, tx, seed, grad_groups, task_keys(task))


def new_state(params, stage_cfg, tx, extra=None) -> loop.TrainState:
    """A fresh stage state of trainable `params`: the optimiser state, an EMA copy when `stage_cfg.ema_decay`."""
    ema = jax.tree.map(jnp.copy, params) if stage_cfg.ema_decay else None
    return loop.TrainState(jnp.int32(0), params, tx.init(params), ema, extra)


def initial_state(model: MultiTaskSystem, config, task: str, key, reconstruction_step: int = 0) -> loop.TrainState:
    """A fresh stage state: the trainable parts of `model.init(key)`, AdamW state, EMA copy if enabled.

    A shared segmentation stage's `extra` records the reconstruction step its frozen parts came from.
    """
    stage_cfg = config.train[task]
    params = model.init(key)
    trainable = {k: params[k] for k in trainable_parts(config, task)}
    extra = {"reconstruction_step": jnp.int32(reconstruction_step)} if is_shared(config, task) else None
    return new_state(trainable, stage_cfg, optimizer(stage_cfg, config.train.batch_size), extra)


def abstract_state(model: MultiTaskSystem, config, task: str, mesh) -> loop.TrainState:
    """Shapes, dtypes and replicated shardings of a stage state (a restore target), nothing allocated."""
    return abstract_of(lambda k: initial_state(model, config, task, k), mesh)


def abstract_of(initial_state_fn: Callable, mesh) -> loop.TrainState:
    """The restore target of the state `initial_state_fn(key)` would create, replicated over `mesh`."""
    return parallel.abstract_replicated(initial_state_fn, mesh)


def restore(config, workdir: str, name: str, initial_state_fn: Callable) -> tuple[int | None, loop.TrainState | None]:
    """(step, state) of stage `name`'s latest checkpoint in `workdir`, or (None, None)."""
    return loop.restore_stage(workdir, name, config.train, abstract_of(initial_state_fn, parallel.make_mesh()))


def deployed(state: loop.TrainState) -> dict:
    """The weights a stage serves with: its EMA when it keeps one, else its parameters."""
    return state.ema_params if state.ema_params is not None else state.params


def _missing(workdir: str, task: str, why: str = "") -> FileNotFoundError:
    return FileNotFoundError(
        f"no trained {task} checkpoint in {workdir} (expected {workdir}/{task}/checkpoints){why}. Train "
        f"first: python launch.py --config={CONFIG_FILES[task]}[:PRESET] --workdir={workdir} --mode=train"
    )


def _shared_parts(config, workdir: str, model, mesh) -> tuple[dict, int]:
    """The reconstruction stage's deployed shared parts (frozen for segmentation) and its step."""
    abstract = abstract_state(model, config, RECONSTRUCTION, mesh)
    step, state = loop.restore_stage(workdir, RECONSTRUCTION, config.train, abstract)
    if state is None:
        why = (
            "; train.segmentation.shared=True trains segmentation on the reconstruction stage's frozen "
            "transmitter (or set --config.train.segmentation.shared=False to train segmentation on its own)"
        )
        raise _missing(workdir, RECONSTRUCTION, why)
    weights = deployed(state)
    return {k: weights[k] for k in SHARED_PARTS}, int(step)


def _check_transmitter(seg_state: loop.TrainState, recon_step: int) -> None:
    trained_on = int(jax.device_get(seg_state.extra["reconstruction_step"]))
    if trained_on != recon_step:
        log.info(
            f"[segmentation] WARNING: the segmentation decoder was trained on the reconstruction stage at step "
            f"{trained_on}, but that stage is now at step {recon_step}; retrain segmentation in a new workdir "
            "to match the current transmitter."
        )


def train_task(config: ml_collections.ConfigDict, workdir: str, task: str | None = None) -> dict:
    """Run (or resume) the stage of `task` (default `config.task`); return the task's deployed parameters
    (every part on its path, frozen ones included)."""
    task = check_task(task or config.task)
    model = build_model(config)
    frozen, recon_step = None, 0
    if is_shared(config, task):
        mesh = parallel.make_mesh()
        frozen, recon_step = _shared_parts(config, workdir, model, mesh)
        log.info(f"[{task}] frozen {', '.join(SHARED_PARTS)} from the reconstruction stage at step {recon_step}")
        _, previous = loop.restore_stage(workdir, task, config.train, abstract_state(model, config, task, mesh))
        if previous is not None:
            _check_transmitter(previous, recon_step)
    final_round = distill_train.sampled_round(config) if task == RECONSTRUCTION else None  # fail before training
    state = fit_stage(
        config, workdir, name=task, task=task,
        initial_state_fn=lambda k: initial_state(model, config, task, k, reconstruction_step=recon_step),
        loss_fn=_loss_of(model, task),
        seed=config.seed + _SEED_OFFSET[task], frozen=frozen,
    )
    params = dict(frozen or {}, **deployed(state))
    rounds = distill_train.config_rounds(config) if task == RECONSTRUCTION else ()
    if rounds:
        students = distill_rounds(model, config, workdir, params, rounds)
        if final_round is not None:
            params = dict(params, dit=students[final_round - 1])
    return params


# -- progressive distillation of the DiT ---------------------------------------------------------------
def distill_predict(model: MultiTaskSystem):
    """predict(dit, x_t, t, (y, g_R)) -> eps_hat: the DiT's clipped x0 prediction as noise (`denoiser_fn`'s)."""

    def predict(dit, x_t, t, cond):
        y, g = cond
        return model.denoiser_fn({"dit": dit}, y, g)(x_t, t)

    return predict


def make_distill_step(model: MultiTaskSystem, cfg, train_snrs, steps: int, tx, seed: int, grad_groups: int = 0):
    """One round's (state, batch, frozen) step (`casc_jax.train.distill.make_distill_step`): x0 = the image,
    the condition (y, g_R) through the frozen transmitter, channel and receiver KB at a per-example training SNR;
    `frozen` is {'teacher': DiT params, 'aux': the reconstruction stage's other parts}."""

    def prepare(aux, b, key):
        y = model.channel(key, model.transmit(aux, b["image"], RECONSTRUCTION), b["snr"])
        return b["image"], (y, model.receiver_features(aux, y, RECONSTRUCTION))

    return distill_train.make_distill_step(
        distill_predict(model), model.schedule, steps, tx, seed, weighting=cfg.get("weighting", "truncated_snr"),
        prepare=prepare, train_snrs=train_snrs, ema_decay=cfg.get("ema_decay") or None, grad_groups=grad_groups,
    )


def _student_state(dit, cfg, tx) -> loop.TrainState:
    return distill_train.initial_student_state(dit, tx, ema=bool(cfg.get("ema_decay")))


def distill_rounds(model: MultiTaskSystem, config, workdir: str, params: dict, rounds) -> list:
    """Train (or resume) every round on the reconstruction data (`distill_train.run_rounds`); the students' DiTs."""
    d = config.train.distill
    mesh = parallel.make_mesh()
    groups = parallel.check_grad_groups(config.train.get("grad_groups") or 0, config.train.batch_size, mesh.size)
    tx = optimizer(d, config.train.batch_size)
    aux = {k: params[k] for k in SHARED_PARTS}

    def make_step(steps, r):
        log.info(f"[{distill_train.stage_name(r)}] distilling a {2 * steps}-step teacher into a {steps}-step student")
        return make_distill_step(model, d, config.channel.train_snrs, steps, tx, config.seed + 10 + r, groups)

    def run_round(r, step, teacher, initial):
        return fit_stage(
            config, workdir, name=distill_train.stage_name(r), task=RECONSTRUCTION, initial_state_fn=lambda k: initial,
            loss_fn=None, seed=config.seed + 10 + r, frozen={"teacher": teacher, "aux": aux}, step=step, stage_cfg=d,
        )

    return distill_train.run_rounds(params["dit"], rounds, make_step, run_round, tx, ema=bool(d.get("ema_decay")))


def _loss_of(model: MultiTaskSystem, task: str) -> Callable:
    def loss_fn(params, b, key):
        if task == RECONSTRUCTION:
            return model.recon_loss(params, b["image"], key, b["snr"])
        return model.seg_loss(params, b["image"], b["mask"], key, b["snr"])

    return loss_fn


def fit_stage(
    config, workdir: str, *, name: str, task: str, initial_state_fn: Callable, loss_fn: Callable | None, seed: int,
    frozen=None, step: Callable | None = None, stage_cfg=None,
) -> loop.TrainState:
    """Run (or resume) stage `name` of any system on `task`'s data: `config.train[name]` (AdamW, steps, EMA),
    `make_loss_step(loss_fn)` data-parallel, checkpoints in WORKDIR/<name>/checkpoints. Returns the final state.
    `step` (with `stage_cfg`, its section) replaces the loss step: a distillation round's."""
    mesh = parallel.make_mesh()
    global_batch = config.train.batch_size
    local_batch = parallel.check_batch_size(global_batch, mesh)
    stage_cfg = config.train[name] if stage_cfg is None else stage_cfg
    state = parallel.init_replicated(initial_state_fn, jax.random.key(config.seed), mesh)
    steps = stage_cfg.num_steps or loop.num_steps(stage_cfg, num_examples(config, task, "train"), global_batch)
    groups = parallel.check_grad_groups(config.train.get("grad_groups") or 0, global_batch, mesh.size)
    if step is None:
        tx = optimizer(stage_cfg, global_batch)
        step = make_loss_step(loss_fn, stage_cfg, config.channel.train_snrs, tx, seed, groups, task_keys(task))
    writer = loop.make_writer(workdir)
    run = loop.stage_runner(
        workdir=workdir, train_cfg=config.train, mesh=mesh, writer=writer, local_batch={name: local_batch},
        total_steps={name: steps}, make_batches=lambda local, seed, start: loop.skip_batches(
            make_batches(config, task, "train", Stream.training(local, seed)), start),
    )
    try:
        return run(name, step, frozen, seed, state)
    finally:
        writer.close()


def load_task_params(config, workdir: str, task: str) -> tuple[dict, str]:
    """The deployed parameters of `task` trained in `workdir` and a description of where they came from.

    FileNotFoundError (saying which config to train) when the stage, or for a shared segmentation stage
    the reconstruction stage, has no checkpoint.
    """
    check_task(task)
    model = build_model(config)
    mesh = parallel.make_mesh()
    step, state = loop.restore_stage(workdir, task, config.train, abstract_state(model, config, task, mesh))
    if state is None:
        raise _missing(workdir, task)
    params, source = dict(deployed(state)), f"trained {task} checkpoint (step {step})"
    r = distill_train.sampled_round(config) if task == RECONSTRUCTION else None
    if r is not None:
        d = config.train.distill
        abstract = abstract_of(lambda k: _student_state(model.init(k)["dit"], d, optimizer(d, 1)), mesh)
        name, step_d, params["dit"] = distill_train.restore_student(workdir, config.train, r, abstract)
        source += f", distilled student {name} step {step_d}"
    if is_shared(config, task):
        frozen, recon_step = _shared_parts(config, workdir, model, mesh)
        _check_transmitter(state, recon_step)
        params = dict(frozen, **params)
        source += f" on the shared transmitter of the reconstruction stage (step {recon_step})"
    return params, source


def batches_for_eval(config, task: str, *, batch_size: int, image_size=None) -> Iterator[Mapping[str, np.ndarray]]:
    """One padded pass over `config.data.eval_split` of `task` in file order, the whole global batch on
    every process (the evaluation rule of casc_jax.evaluate.snr_sweep)."""
    return make_batches(config, task, config.data.eval_split, Stream.evaluation(batch_size), image_size)
