"""The multi-task system as a System (`casc_jax.modes`): train and eval from the driver, its own sample and
transmit (masks as well as images), which its baselines (multitask_jax.baselines.run) share.

train and eval work on `config.task` (configs/multitask_recon.py or configs/multitask_seg.py). transmit takes
its task from free text, `--task="<what the receiver should do>"`, through the task KB (paper section III-A),
before any model is built:

    python launch.py --config=configs/multitask_seg.py:smoke --mode=transmit \
        --task="outline the objects in this photo" --image=photo.jpg

writes WORKDIR/transmit/photo_segmentation_snr<S>.png (class indices in a VOC-palette PNG, so it shows in
colour and reads back as labels) or photo_reconstruction_snr<S>.png, at the original image size.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np

from casc_jax import cli, image_io
from casc_jax.modes import System, modes_of
from casc_jax.train import parallel
from multitask_jax import evaluate as mt_eval
from multitask_jax import train as mt_train
from multitask_jax.data import colorize_mask, segmentation_palette, voc_colormap
from multitask_jax.task_kb import TaskSelection
from multitask_jax.tasks import RECONSTRUCTION, SEGMENTATION, TASKS

log = logging.getLogger(__name__)


def with_task(config, task: str):
    """`config` serving `task` (transmit picks its task from the user's text, not from config.task)."""
    if config.task == task:
        return config
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.task = task
    return config


def reconstructor(config, params, mesh):
    """The reconstruction path, DiT decoding with the config's sampler: (x, key, snr) -> x_hat."""
    return mt_eval.reconstructor(mt_train.build_model(config), params, mesh, config.sampler.to_dict())


def sample(system: System, config, workdir, options):
    """The first evaluation images and the task's outputs at every evaluation SNR -> WORKDIR/samples_<task>.png."""
    task = config.task
    params, source = system.load(config, workdir)
    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.eval.grid_images, mesh)
    host = next(mt_train.batches_for_eval(config, task, batch_size=config.eval.grid_images))
    rows = [("image", image_io.to_uint8(host["image"]))]
    if task == RECONSTRUCTION:
        run = system.reconstructor(config, params, mesh)
    else:
        palette = segmentation_palette(config.data.source)
        rows.append(("ground truth", colorize_mask(host["mask"], palette)))
        run = mt_eval.segmenter(system.build_model(config), params, mesh)
    for i, snr in enumerate(config.channel.eval_snrs):
        key = jax.random.fold_in(jax.random.key(config.seed), i)
        out = parallel.to_host(run(host["image"], key, float(snr)))
        shown = image_io.to_uint8(out) if task == RECONSTRUCTION else colorize_mask(out, palette)
        rows.append((f"SNR {snr:g} dB", shown))
    path = os.path.join(workdir, f"samples_{task}.png")
    if parallel.is_primary():
        path = mt_eval.save_rows_figure(rows, path, f"{task} ({source})")
    log.info(f"[sample] {source} -> {path}")
    return path


# -- transmit --------------------------------------------------------------------------------------
def select_task(text: str) -> TaskSelection:
    """The task KB's choice for a free-text requirement, echoed as one line. An ambiguous requirement (one
    line naming both tasks) raises AmbiguousTaskError, an out-of-scope one OutOfScopeError naming the known
    tasks; both are ValueErrors."""
    from multitask_jax.task_kb import AMBIGUOUS, SELECTED, AmbiguousTaskError, OutOfScopeError
    from multitask_jax.task_kb import classify as kb_classify

    selection = kb_classify(text)
    log.info(f"[transmit] task KB: {selection.message()}")
    if selection.status != SELECTED:
        raise (AmbiguousTaskError if selection.status == AMBIGUOUS else OutOfScopeError)(selection)
    if selection.task not in TASKS:
        raise ValueError(
            f"the task KB mapped {text!r} to {selection.task!r}, which this system does not have; "
            f"known tasks: {', '.join(TASKS)}"
        )
    return selection


def restore_mask(mask: np.ndarray, original_size: tuple[int, int], *, fit: str = "pad") -> np.ndarray:
    """Undo `load_images_for_transmit`'s fit on a class mask (S, S): nearest-neighbour resizing, so labels stay
    labels. 'pad' gives (h, w); 'crop' the centre square (min(h, w), min(h, w))."""
    from PIL import Image

    mask = np.asarray(mask, np.uint8)
    h, w = original_size
    if fit == "pad":
        top, left, nh, nw = image_io.letterbox_box((h, w), mask.shape[0])
        mask, size = mask[top : top + nh, left : left + nw], (w, h)
    else:
        size = (min(h, w), min(h, w))
    return np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))


def save_mask_png(mask: np.ndarray, path: str, palette: np.ndarray | None = None) -> str:
    """A class mask (H, W) as a palette PNG in `palette`'s colours (default VOC's: the format of VOC's
    SegmentationClass; `segmentation_palette(data.source)` gives CamVid's for CamVid)."""
    from PIL import Image

    img = Image.fromarray(np.asarray(mask, np.uint8), mode="P")
    img.putpalette((voc_colormap() if palette is None else np.asarray(palette, np.uint8)).ravel().tolist())
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path, format="PNG")
    return path


def transmit(system: System, config, workdir, options):
    """A user's images -> the task chosen by `--task` text -> reconstruction or coloured mask PNGs per SNR."""
    text = options.get("task")
    if not text:
        raise ValueError(
            '--mode=transmit needs --task="<what the receiver should do>", e.g. --task="segment the image" or '
            f'--task="reconstruct the picture" (tasks: {", ".join(TASKS)})'
        )
    paths = options.get("images") or []
    if not paths:
        raise ValueError("--mode=transmit needs --image=PATH (repeat the flag for several images)")
    task = select_task(text).task  # before any model work: an out-of-scope request stops here
    return transmit_task(system, with_task(config, task), workdir, options)


def transmit_task(system: System, config, workdir, options, tag: str | None = None):
    """`options['images']` through `system` for `config.task` at each SNR -> PNGs (named with `tag`, default
    '_<task>')."""
    task = config.task
    paths = options.get("images") or []
    cli.check_images(paths)
    snrs = options.get("snrs") or tuple(config.channel.eval_snrs)
    out_dir = options.get("out_dir") or os.path.join(workdir, "transmit")
    targets = cli.transmit_targets(paths, snrs, out_dir, tag=f"_{task}" if tag is None else tag)
    h, w = mt_train.image_hw(config)
    if h != w:
        raise ValueError(f"transmit letterboxes into a square model input; model.image_size is {(h, w)}")
    fit = options.get("fit", "pad")
    images, sizes = image_io.load_images_for_transmit(paths, h, fit=fit)
    params, source = system.load(config, workdir)
    model = system.build_model(config)
    mesh = parallel.make_mesh()
    log.info(f"[transmit] {source}; {len(paths)} image(s), {model.num_channel_uses} channel uses "
             f"({model.overhead_bits()} bits) each, {config.channel.kind} channel")
    if task == RECONSTRUCTION:
        run = system.reconstructor(config, params, mesh)
    else:
        run = mt_eval.segmenter(model, params, mesh)
    batch = np.concatenate([images, np.zeros((-len(images) % mesh.devices.size,) + images.shape[1:], images.dtype)])
    written = []
    for i, (snr, row) in enumerate(zip(snrs, targets)):
        out = parallel.to_host(run(batch, jax.random.fold_in(jax.random.key(config.seed), i), float(snr)))
        for target, result, original in zip(row, out[: len(images)], sizes):
            if parallel.is_primary() and task == SEGMENTATION:
                save_mask_png(restore_mask(result, original, fit=fit), target,
                              segmentation_palette(config.data.source))
            elif parallel.is_primary():
                image_io.save_png(image_io.restore_size(result, original, fit=fit), target)
            written.append(target)
    log.info(f"[transmit] wrote {len(written)} file(s) to {out_dir}")
    return written


def _load(config, workdir):
    return mt_train.load_task_params(config, workdir, config.task)


def _evaluate(config, workdir, params):
    return mt_eval.evaluate(config, params, workdir, config.task)


# train and eval: the stage of `config.task` (configs/multitask_recon.py or multitask_seg.py), from the driver;
# sample and transmit: the task's own outputs (masks as well as images; transmit's task from the task KB).
SYSTEM = System(
    build_model=mt_train.build_model,
    train=mt_train.train_task,
    load=_load,
    evaluate=_evaluate,
    reconstructor=reconstructor,
    modes={"sample": sample, "transmit": transmit},
)
MODES = modes_of(SYSTEM)
