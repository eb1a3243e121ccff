"""Training state, optimiser, EMA and the generic fit loop (progress, logging, checkpoints, NaN stop)."""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from clu import metric_writers, periodic_actions

from casc_jax.channel import sample_snr
from casc_jax.train.checkpoint import Checkpointer
from casc_jax.train.parallel import jit_step_with, shard_batch, value_and_grad

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss or gradients became NaN/Inf; the last good checkpoint is left in place."""


@flax.struct.dataclass
class TrainState:
    """Everything a stage needs to resume: step, trainable params, optimiser state, EMA, extras."""

    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any = None
    extra: Any = None  # e.g. a discriminator's params and optimiser state


def adam(lr: float, b1: float, b2: float, weight_decay: float = 0.0, clip_norm: float = 0.0):
    """Adam(W) with optional global-norm clipping."""
    opt = optax.adamw(lr, b1, b2, weight_decay=weight_decay) if weight_decay else optax.adam(lr, b1, b2)
    return optax.chain(optax.clip_by_global_norm(clip_norm), opt) if clip_norm else opt


def learning_rate(stage_cfg, global_batch: int) -> float:
    """LDM convention: base_lr per example, times the global batch when `scale_lr`."""
    return stage_cfg.base_lr * (global_batch if stage_cfg.scale_lr else 1)


def ema_decay_at(decay: float, step) -> jax.Array:
    """LDM's EMA warm-up (LitEma): min(decay, (1 + n) / (10 + n)) after n updates, so that a short run's
    average does not keep the initial weights (plain 0.999 over 2000 steps keeps 0.999^2000 = 13.5% of them)."""
    n = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + n) / (10.0 + n))


def ema_update(ema, params, decay: float, step):
    """One EMA update of `params` into `ema` with the warmed-up decay; `step` counts updates from 1 (LitEma)."""
    d = ema_decay_at(decay, step)
    return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)


def all_finite(*trees) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for t in trees for x in jax.tree.leaves(t)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def guarded(new_state: TrainState, old_state: TrainState, finite: jax.Array) -> TrainState:
    """Keep the old state when the step produced non-finite values."""
    return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state, old_state)


def make_loss_step(
    loss_fn: Callable,
    tx: optax.GradientTransformation,
    seed: int,
    train_snrs,
    *,
    ema_decay: float | None = None,
    grad_groups: int = 0,
    keys: tuple[str, ...] = ("image",),
) -> Callable:
    """(state, batch, frozen) -> (state, metrics): one step on `loss_fn(trainable, frozen, b, key)`, a scalar
    mean over the batch; pure, to be jitted data-parallel. Every system trains with it but CASC's stage 1
    (two optimisers and its own backward pass).

    `b` holds the batch's `keys` and 'snr', one SNR per example drawn uniformly from `train_snrs`;
    the keys come from `fold_in(key(seed), state.step)`. `frozen` (what is not trained: another stage's
    params, LPIPS weights, or None) is an argument, not a constant baked into the compiled step. The EMA
    is updated when the state keeps one (LDM's warmed-up `ema_decay`); a step with a non-finite loss or
    gradient leaves the state as it was, but for the step count. `grad_groups` > 0: the
    device-count-independent gradient of `parallel.value_and_grad`.
    """
    train_snrs = tuple(float(s) for s in train_snrs)

    def step(state: TrainState, batch, frozen):
        k_snr, k_loss = jax.random.split(jax.random.fold_in(jax.random.key(seed), state.step))
        b = {k: batch[k] for k in keys}
        b["snr"] = sample_snr(k_snr, b[keys[0]].shape[0], train_snrs)
        grad_fn = value_and_grad(lambda p, b, key: loss_fn(p, frozen, b, key), grad_groups)
        loss, grads = grad_fn(state.params, b, k_loss)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema_params
        if ema is not None:
            ema = ema_update(ema, params, ema_decay, state.step + 1)
        new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)
        finite = all_finite(loss, grads)
        return guarded(new, state.replace(step=state.step + 1), finite), {"loss": loss, "finite": finite}

    return step


def stage_batch_size(train_cfg, stage: str) -> int:
    """Global batch of `stage`: its own `batch_size` when > 0, else `train.batch_size`."""
    return int(train_cfg[stage].get("batch_size", 0) or train_cfg.batch_size)


def num_steps(stage_cfg, examples: int, global_batch: int) -> int:
    """`num_steps` when set, else `epochs` passes over `examples`."""
    if stage_cfg.num_steps:
        return int(stage_cfg.num_steps)
    return max(1, int(np.ceil(stage_cfg.epochs * examples / global_batch)))


def _format_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


@jax.jit
def mark_nonfinite(first_bad: jax.Array, finite: jax.Array, step: jax.Array) -> jax.Array:
    """The first non-finite step so far (-1: none), updated on the device: no host sync per step."""
    return jnp.where((first_bad < 0) & jnp.logical_not(finite), step, first_bad)


def _diverged(name: str, step: int, checkpointer: Checkpointer) -> TrainingDiverged:
    last = checkpointer.latest_step
    kept = (
        f"The last good checkpoint (step {last}) is kept in {checkpointer.path}; rerunning resumes from it."
        if last is not None
        else "No checkpoint was saved yet, so nothing was kept."
    )
    return TrainingDiverged(
        f"[{name}] non-finite loss or gradients at step {step}; stopped. {kept} Check the data for NaN/Inf "
        "values, or lower the learning rate (--config.train.<stage>.base_lr)."
    )


def fit(
    *,
    name: str,
    state: TrainState,
    step_fn: Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, Mapping[str, jax.Array]]],
    batches: Iterator[Mapping[str, np.ndarray]],
    total_steps: int,
    mesh: jax.sharding.Mesh,
    checkpointer: Checkpointer,
    writer: metric_writers.MetricWriter,
    log_every: int = 100,
    clock: Callable[[], float] = time.perf_counter,
) -> TrainState:
    """Run `step_fn` from `state.step` to `total_steps`, logging, checkpointing and stopping on NaN.

    `step_fn` returns (new_state, metrics) with a scalar bool `finite` among the metrics and must
    leave the state unchanged when it is False (see `guarded`). The first non-finite step is kept on
    the device (`mark_nonfinite`) and read only at log steps and before each checkpoint save, so the
    loop never waits for the device otherwise and a run that went non-finite is never saved: it stops
    with `TrainingDiverged`, keeping the last good checkpoint.
    """
    start = int(jax.device_get(state.step))
    if start >= total_steps:
        log.info(f"[{name}] already trained: checkpoint at step {start} of {total_steps}")
        return state
    log.info(f"[{name}] mesh: {mesh.devices.size} devices over {jax.process_count()} process(es)")
    log.info(f"[{name}] training steps {start} -> {total_steps}")
    progress = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer, every_steps=log_every)
    pending: list[Mapping[str, jax.Array]] = []
    window_start, window_step = clock(), start
    first_bad = np.int32(-1)
    for step in range(start + 1, total_steps + 1):
        batch = shard_batch(next(batches), mesh)
        state, metrics = step_fn(state, batch)
        first_bad = mark_nonfinite(first_bad, metrics["finite"], np.int32(step))
        pending.append(metrics)
        progress(step)
        due_log = step % log_every == 0 or step == total_steps
        due_save = step % checkpointer.save_every == 0 or step == total_steps
        if (due_log or due_save) and (bad := int(jax.device_get(first_bad))) >= 0:
            raise _diverged(name, bad, checkpointer)
        if due_log:
            host = jax.device_get(pending)
            scalars = {k: float(np.mean([m[k] for m in host])) for k in host[0] if k != "finite"}
            writer.write_scalars(step, {f"{name}/{k}": v for k, v in scalars.items()})
            now = clock()
            rate = (step - window_step) / max(now - window_start, 1e-9)
            window_start, window_step = now, step
            shown = " ".join(f"{k} {v:.4g}" for k, v in scalars.items())
            log.info(
                f"[{name}] step {step}/{total_steps} {shown} | {rate:.2f} steps/s | "
                f"ETA {_format_eta((total_steps - step) / max(rate, 1e-9))}"
            )
            pending = []
        if due_save:
            checkpointer.save(step, state, force=step == total_steps)
    writer.flush()
    return state


def make_writer(workdir: str) -> metric_writers.MetricWriter:
    """TensorBoard + console writer; only process 0 writes event files."""
    return metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)


def stage_checkpointer(workdir: str, stage: str, train_cfg) -> Checkpointer:
    """WORKDIR/<stage>/checkpoints with the config's save interval and retention."""
    return Checkpointer(
        os.path.join(workdir, stage, "checkpoints"),
        max_to_keep=train_cfg.keep_checkpoints,
        save_every=train_cfg.checkpoint_every,
    )


def run_stage(
    *,
    name: str,
    workdir: str,
    train_cfg,
    initial_state: TrainState,
    make_batches: Callable[[int], Iterator[Mapping[str, np.ndarray]]],
    **fit_kwargs,
) -> TrainState:
    """Resume stage `name` from its latest checkpoint (or start from `initial_state`) and `fit` it.

    `make_batches(k)` is the training stream from its k-th batch on: a run restored at step k sees the
    batches an uninterrupted run would, and its random keys are folded from the step, so it ends with
    the same parameters.
    """
    ckpt = stage_checkpointer(workdir, name, train_cfg)
    try:
        state = ckpt.restore(initial_state) or initial_state
        batches = make_batches(int(jax.device_get(state.step)))
        return fit(
            name=name, state=state, checkpointer=ckpt, log_every=train_cfg.log_every, batches=batches, **fit_kwargs
        )
    finally:
        ckpt.close()


def stage_runner(
    *,
    workdir: str,
    train_cfg,
    mesh,
    writer,
    make_batches: Callable[[int, int, int], Iterator[Mapping[str, np.ndarray]]],
    local_batch: Mapping[str, int],
    total_steps: Mapping[str, int],
) -> Callable[..., TrainState]:
    """The one stage runner of every system: `run(name, step, const, seed, initial_state, batch_of=None)`.

    It runs (or resumes) stage `name` with `run_stage`: `step(state, batch, const)` jitted data-parallel with
    its constants bound (`parallel.jit_step_with`: frozen parts, LPIPS weights, a teacher), on the stream
    `make_batches(local_batch, seed, start)`, for `total_steps`; the batch size and step count are those of
    `batch_of` (default `name`; a distillation round reads its section's, 'distill').
    """

    def run(name: str, step: Callable, const, seed: int, initial_state: TrainState, batch_of: str | None = None):
        section = batch_of or name
        return run_stage(
            name=name,
            workdir=workdir,
            train_cfg=train_cfg,
            initial_state=initial_state,
            step_fn=jit_step_with(step, const, mesh),
            make_batches=lambda start: make_batches(local_batch[section], seed, start),
            total_steps=int(total_steps[section]),
            mesh=mesh,
            writer=writer,
        )

    return run


def skip_batches(batches: Iterator, start: int) -> Iterator:
    """A deterministic stream from its `start`-th batch, for pipelines that cannot seek (reads and drops)."""
    return itertools.islice(batches, start, None)


def restore_stage(workdir: str, name: str, train_cfg, abstract_state) -> tuple[int | None, TrainState | None]:
    """(step, state) of stage `name`'s latest checkpoint, or (None, None) when it has none."""
    if not os.path.isdir(os.path.join(workdir, name, "checkpoints")):
        return None, None
    ckpt = stage_checkpointer(workdir, name, train_cfg)
    try:
        state = ckpt.restore(abstract_state)  # may fall back to an older intact step
        return ckpt.latest_step, state
    finally:
        ckpt.close()
