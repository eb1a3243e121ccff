"""A progressive-distillation round as a train step (Salimans & Ho 2022; the pure pieces are in
``casc_jax.diffusion.distill``), for any denoiser given as ``predict(params, x_t, t, cond) -> eps_hat``.

The student is the denoiser network itself: its state starts as a copy of the teacher's parameters
(:func:`initial_student_state`); the teacher is an argument of the step (``frozen``), under
``stop_gradient``, so it is never trained and never baked into the compiled step. The step is
``loop.make_loss_step``'s: the same optimiser, EMA, non-finite guard and data-parallel gradients as every
other stage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from casc_jax.diffusion import distill as distill_lib
from casc_jax.diffusion.schedules import Schedule
from casc_jax.train import loop

# predict(params, x_t (B, ...), t int32 (B,), cond) -> the noise prediction eps_hat (B, ...)
Predict = Callable[[Any, jax.Array, jax.Array, Any], jax.Array]
# prepare(aux, batch, key) -> (x0 (B, ...), cond): the clean data and the condition of a batch
Prepare = Callable[[Any, dict, jax.Array], tuple[jax.Array, Any]]


def initial_student_state(teacher_params, tx: optax.GradientTransformation, *, ema: bool = True) -> loop.TrainState:
    """Step 0 of a round: the student's params (and EMA) a copy of the teacher's, a fresh optimiser state."""
    student = jax.tree.map(jnp.copy, teacher_params)
    return loop.TrainState(
        jnp.int32(0), student, tx.init(student), jax.tree.map(jnp.copy, teacher_params) if ema else None
    )


def make_distill_step(
    predict: Predict,
    schedule: Schedule,
    steps: int,
    tx: optax.GradientTransformation,
    seed: int,
    *,
    weighting: str = "truncated_snr",
    prepare: Prepare | None = None,
    train_snrs=(0.0,),
    keys: tuple[str, ...] = ("image",),
    ema_decay: float | None = None,
    grad_groups: int = 0,
) -> Callable:
    """(state, batch, frozen) -> (state, metrics): one step of the round that distils a 2N-step teacher into
    an N-step student (N = `steps`); pure, to be jitted (data-parallel) like every ``loop.make_loss_step``.

    `state.params` are the student's; `frozen` is ``{'teacher': teacher params, 'aux': anything else
    `prepare` needs}`` (e.g. a frozen autoencoder). `prepare(aux, b, key)` gives ``(x0, cond)`` from the
    batch ``b`` (its `keys` and a per-example 'snr' drawn from `train_snrs`); without it ``x0 = b[keys[0]]``
    and ``cond = None``. The teacher and whatever `prepare` returns are under ``stop_gradient``: only the
    student is trained. `weighting`: ``diffusion.distill.WEIGHTINGS`` (the paper's ``'truncated_snr'``).
    """
    distill_lib.check_student_steps(schedule.num_timesteps, steps)
    if weighting not in distill_lib.WEIGHTINGS:
        raise ValueError(f"unknown distillation weighting {weighting!r}; choose one of {distill_lib.WEIGHTINGS}")

    def loss_fn(student, frozen, b, key):
        k_prep, k_loss = jax.random.split(key)
        teacher = jax.lax.stop_gradient(frozen["teacher"])
        if prepare is None:
            x0, cond = b[keys[0]], None
        else:
            x0, cond = prepare(frozen.get("aux"), b, k_prep)
        x0, cond = jax.lax.stop_gradient((x0, cond))
        return distill_lib.distill_loss(
            lambda x, t: predict(student, x, t, cond),
            lambda x, t: predict(teacher, x, t, cond),
            schedule,
            x0,
            k_loss,
            steps,
            weighting,
        )

    return loop.make_loss_step(loss_fn, tx, seed, train_snrs, ema_decay=ema_decay, grad_groups=grad_groups, keys=keys)


# -- a system's distillation stage (`train.distill` in its config), shared by every system that has one -------
def config_rounds(config) -> tuple[int, ...]:
    """The student step count N of each round of `config.train.distill` (empty: `rounds` is 0 or unset).
    Round 1's teacher runs `teacher_steps` grid steps (None: all T = `diffusion.num_timesteps`)."""
    d = config.train.get("distill")
    if d is None or not d.get("rounds"):
        return ()
    T = num_timesteps(config)
    rounds = distill_lib.round_steps(d.get("teacher_steps") or T, d.rounds)
    distill_lib.check_student_steps(T, rounds[0])
    return rounds


def num_timesteps(config) -> int:
    """T of the config's diffusion schedule: `diffusion` (CASC, DiffSC) or `model.diffusion` (multi-task)."""
    section = config.diffusion if "diffusion" in config else config.model.diffusion
    return int(section.num_timesteps)


def sampled_round(config) -> int | None:
    """The round whose student `config.sampler` runs: None unless its name is 'distilled', else the round with
    `sampler.steps` student steps (ValueError naming the trained step counts if there is none)."""
    from casc_jax.diffusion import SamplerSpec

    spec = SamplerSpec.of(config.sampler.to_dict())
    if spec.name != "distilled":
        return None
    rounds = config_rounds(config)
    if spec.steps not in rounds:
        raise ValueError(
            f"sampler 'distilled' with steps={spec.steps} needs a distillation round with a {spec.steps}-step student; "
            f"train.distill (rounds={config.train.get('distill', {}).get('rounds')}) gives students of "
            f"{list(rounds) or 'no'} steps. Set --config.train.distill.rounds (and teacher_steps)."
        )
    return rounds.index(spec.steps) + 1


def stage_name(r: int) -> str:
    """The stage (and checkpoint folder WORKDIR/distill<r>) name of round `r` (1-based)."""
    return f"distill{r}"


def student_of(state: loop.TrainState):
    """A round's student: its EMA weights when it keeps them."""
    return state.ema_params if state.ema_params is not None else state.params


def restore_student(workdir: str, train_cfg, r: int, abstract_state) -> tuple[str, int, Any]:
    """(stage name, step, student weights) of round `r` restored from WORKDIR/distill<r>; FileNotFoundError
    saying how to train it when that round has no checkpoint."""
    name = stage_name(r)
    step, state = loop.restore_stage(workdir, name, train_cfg, abstract_state)
    if state is None:
        raise FileNotFoundError(
            f"sampler 'distilled' needs the distilled student of round {r} ({workdir}/{name}/checkpoints). "
            "Train it first: python launch.py --config=... --workdir=... --mode=train"
        )
    return name, step, student_of(state)


def run_rounds(
    teacher,
    rounds: tuple[int, ...],
    make_step: Callable[[int, int], Callable],
    run_round: Callable[[int, Callable, Any, loop.TrainState], loop.TrainState],
    tx: optax.GradientTransformation,
    *,
    ema: bool = True,
) -> list:
    """Train (or resume) every round: round r's student starts as a copy of its teacher (round 1: `teacher`,
    the trained denoiser; round r: round r-1's student) and learns its `rounds[r-1]`-step grid.

    `make_step(steps, r)` gives the round's (state, batch, frozen) step (:func:`make_distill_step`);
    `run_round(r, step, teacher, initial_state)` runs it as stage :func:`stage_name` (r) under the system's fit
    loop and returns its final state. Returns each round's student, in round order.
    """
    students = []
    for r, steps in enumerate(rounds, 1):
        initial = initial_student_state(teacher, tx, ema=ema)
        state = run_round(r, make_step(steps, r), teacher, initial)
        teacher = student_of(state)
        students.append(teacher)
    return students
