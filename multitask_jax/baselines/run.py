"""The multi-task baselines (configs/mt_*.py) as Systems (`casc_jax.modes`): train, eval, sample, transmit.

Training is `multitask_jax.train.fit_stage`, the loop our system's stages use (same SNR sampling, AdamW,
checkpoints in WORKDIR/<task>/checkpoints, resume, NaN stop), with each baseline's own loss. Evaluation of
the JSCC baselines is `multitask_jax.evaluate` (the same records and files as our system's, method = the
baseline's name); the digital baseline's is `multitask_jax.baselines.digital_eval`. sample and transmit
are `multitask_jax.run`'s on the baseline's own task (no task KB: a baseline serves one task); the digital
baseline's transmit sends each image through its link and writes a mask only for delivered images.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax
import numpy as np

from casc_jax import cli, image_io
from casc_jax.modes import System, modes_of
from multitask_jax import evaluate as mt_eval
from multitask_jax import run as mt_run
from multitask_jax import train as mt_train
from multitask_jax.baselines import digital_eval
from multitask_jax.baselines.models import DIGITAL, build_model
from multitask_jax.data import segmentation_palette

log = logging.getLogger(__name__)

SEED_OFFSET = 3  # our stages use seed + 1 (reconstruction) and + 2 (segmentation)


def _state_fn(config, model):
    stage = config.train[model.task]
    tx = mt_train.optimizer(stage, config.train.batch_size)
    return lambda key: mt_train.new_state(model.init(key), stage, tx)


def train_params(config, workdir: str) -> dict:
    """Train (or resume) the baseline's stage; its deployed parameters."""
    model = build_model(config)
    state = mt_train.fit_stage(
        config, workdir, name=model.task, task=model.task, initial_state_fn=_state_fn(config, model),
        loss_fn=model.loss, seed=config.seed + SEED_OFFSET,
    )
    return mt_train.deployed(state)


def load_params(config, workdir: str) -> tuple[dict, str]:
    """(deployed parameters, where they came from); FileNotFoundError naming the config to train."""
    model = build_model(config)
    step, state = mt_train.restore(config, workdir, model.task, _state_fn(config, model))
    if state is None:
        raise FileNotFoundError(
            f"no trained {config.name} checkpoint in {workdir} (expected {workdir}/{model.task}/checkpoints). "
            f"Train first: python launch.py --config=configs/{config.name}.py[:PRESET] "
            f"--workdir={workdir} --mode=train"
        )
    return mt_train.deployed(state), f"trained {config.name} checkpoint (step {step})"


def evaluate(config, workdir, params):
    if config.system == DIGITAL:
        return digital_eval.evaluate(config, params, workdir)
    return mt_eval.evaluate(config, params, workdir, config.task, build_model=build_model,
                            method=config.baseline)


def reconstructor(config, params, mesh):
    """A JSCC baseline's reconstruction (x, key, snr) -> x_hat (no reverse chain)."""
    return mt_eval.reconstructor(build_model(config), params, mesh, {})


def transmit(system, config, workdir, options):
    """The user's images through the baseline at each SNR (its own task) -> PNGs in WORKDIR/transmit."""
    return mt_run.transmit_task(system, config, workdir, options, tag="")


def transmit_digital(system, config, workdir, options):
    """The user's images through JPEG + LDPC + QAM at each SNR; the FCN's mask for each delivered image,
    a line naming each failed one (no file is written for it)."""
    paths = options.get("images") or []
    cli.check_images(paths)
    snrs = options.get("snrs") or tuple(config.channel.eval_snrs)
    out_dir = options.get("out_dir") or os.path.join(workdir, "transmit")
    h, w = models_hw(config)
    images, sizes = image_io.load_images_for_transmit(paths, h, fit=options.get("fit", "pad"))
    params, source = load_params(config, workdir)
    model = build_model(config)
    written = []
    for mod in model.modulations:
        link = model.link(mod)
        log.info(f"[transmit] {source}; JPEG+LDPC+{mod.upper()}: {link.plan.channel_uses} channel uses per image")
        targets = cli.transmit_targets(paths, snrs, out_dir, tag=f"_{mod}")
        for i, (snr, row) in enumerate(zip(snrs, targets)):
            result = link.transmit(jax.random.fold_in(jax.random.key(config.seed), i), images, float(snr))
            rx, ok = digital_eval.received(result, images.shape)
            pred = np.asarray(jax.numpy.argmax(model.segment(params, rx), -1))
            for target, mask, delivered, size, path in zip(row, pred, ok, sizes, paths):
                if not delivered:
                    log.info(f"[transmit] {path} at {snr:g} dB over {mod}: decoding failure, nothing received")
                    continue
                written.append(mt_run.save_mask_png(mt_run.restore_mask(mask, size, fit=options.get("fit", "pad")),
                                                    target, segmentation_palette(config.data.source)))
    log.info(f"[transmit] wrote {len(written)} file(s) to {out_dir}")
    return written


def models_hw(config) -> tuple[int, int]:
    h, w = mt_train.image_hw(config)
    if h != w:
        raise ValueError(f"transmit letterboxes into a square model input; model.image_size is {(h, w)}")
    return h, w


# The JSCC baselines: train and eval from the driver, sample and transmit the multi-task system's (one task).
SYSTEM = System(build_model=build_model, train=train_params, load=load_params, evaluate=evaluate,
                reconstructor=reconstructor, modes={"sample": mt_run.sample, "transmit": transmit})
MODES = modes_of(SYSTEM)
# The digital baseline: no sample grid (a failed decoding delivers no image); its transmit writes masks only.
DIGITAL_SYSTEM = dataclasses.replace(SYSTEM, modes={"sample": None, "transmit": transmit_digital})
DIGITAL_MODES = modes_of(DIGITAL_SYSTEM)
