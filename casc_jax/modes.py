"""The System interface and the one driver of the launcher's modes, shared by every system.

A system is a :class:`System`: how to build its model, train it (every stage, each resumed from WORKDIR),
restore its deployed parameters, evaluate them, and reconstruct with them, plus any modes of its own. The
driver's modes (:func:`modes_of`: train, eval, sample, transmit) are written once over any System; each
system's module (`casc_jax.casc.run`, `casc_jax.casc.baselines.run`, `multitask_jax.run`, `multitask_jax.baselines.run`)
defines its SYSTEM and `MODES = modes_of(SYSTEM)`, so this module imports none of them.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Callable, Mapping

import jax
import numpy as np

from casc_jax import cli, image_io
from casc_jax import data as data_lib
from casc_jax.train import parallel

log = logging.getLogger(__name__)

Mode = Callable  # (system, config, workdir, options) -> result; `modes_of` binds the system


@dataclasses.dataclass(frozen=True)
class System:
    """What the driver needs of a system; every field a function of the config.

    build_model(config) -> the model (ValueError / TypeError on impossible settings: the launcher calls it
      before any work);
    train(config, workdir) -> the deployed parameters, after every training stage (each resumed from WORKDIR);
    load(config, workdir) -> (deployed parameters, where they came from), FileNotFoundError saying how to train;
    evaluate(config, workdir, params) -> the evaluation sweep's records (WORKDIR/eval);
    reconstructor(config, params, mesh) -> reconstruct(x, key, snr_db) -> x_hat, for sample and transmit
      (None when the system's own `modes` replace them);
    modes: the system's own modes `mode(system, config, workdir, options)`, added to or replacing the
      driver's (e.g. CASC's benchmark); None removes one of the driver's (a system without it).
    """

    build_model: Callable
    train: Callable
    load: Callable
    evaluate: Callable
    reconstructor: Callable | None = None
    modes: Mapping[str, Mode] = dataclasses.field(default_factory=dict)


def train(system: System, config, workdir, options):
    """Every training stage (each resumes from WORKDIR), then the evaluation sweep unless `train.evaluate` is
    False."""
    params = system.train(config, workdir)
    if not config.train.get("evaluate", True):
        log.info("[train] train.evaluate is False: no evaluation sweep")
        return {}
    return system.evaluate(config, workdir, params)


def load(system: System, config, workdir, mode: str):
    """The deployed parameters in WORKDIR, their source logged under `mode`."""
    params, source = system.load(config, workdir)
    log.info(f"[{mode}] {source}")
    return params


def evaluate(system: System, config, workdir, options):
    """The evaluation sweep of the trained model in WORKDIR."""
    return system.evaluate(config, workdir, load(system, config, workdir, "eval"))


def sample(system: System, config, workdir, options):
    """A grid of test images and their reconstructions at each evaluation SNR -> WORKDIR/samples.png."""
    params = load(system, config, workdir, "sample")
    return sample_grid(config, workdir, system.reconstructor(config, params, parallel.make_mesh()))


def transmit(system: System, config, workdir, options):
    """A user's own images -> reconstructed PNGs at each SNR in `--snr` (default: the eval SNRs)."""
    check_transmit_options(options)
    mesh = parallel.make_mesh()
    params = load(system, config, workdir, "transmit")
    log.info(f"[transmit] {system.build_model(config).num_channel_uses} channel uses per image")
    reconstruct = system.reconstructor(config, params, mesh)
    return transmit_images(config, workdir, options, reconstruct, mesh.devices.size)


DRIVER_MODES = {"train": train, "eval": evaluate, "sample": sample, "transmit": transmit}


def modes_of(system: System) -> dict[str, Mode]:
    """The launcher's modes of `system`, each `mode(config, workdir, options)`: the driver's, then the
    system's own, bound to it."""
    modes = {**DRIVER_MODES, **system.modes}
    return {name: functools.partial(mode, system) for name, mode in modes.items() if mode is not None}


def sample_grid(config, workdir, reconstruct) -> str:
    """Test images and their reconstructions at each eval SNR -> WORKDIR/samples.png (any system).

    Rows: the sources, then one row per SNR, each labelled; every process reconstructs the same global
    batch, and process 0 writes the figure.
    """
    n = config.eval.grid_images
    mesh = parallel.make_mesh()
    stream = data_lib.Stream(n, process_index=0, process_count=1)
    batch = next(data_lib.make_dataset(config.data, config.data.eval_split, stream))
    images = parallel.pad_to_devices(batch["image"], mesh)
    rows = [("source", batch["image"])]
    for i, snr in enumerate(config.channel.eval_snrs):
        out = parallel.to_host(reconstruct(images, jax.random.key(i), float(snr)))[:n]
        rows.append((f"SNR {float(snr):g} dB", out))
    path = os.path.join(workdir, "samples.png")
    if parallel.is_primary():
        labelled_grid(rows, path, title=f"{config.name} (CR {config.cr})")
    log.info(f"[sample] rows: source, then SNR {list(config.channel.eval_snrs)} dB -> {path}")
    return path


def labelled_grid(rows, path: str, title: str | None = None, min_cell_px: int = 96) -> str:
    """Rows of images [(label, (N, H, W, 3) in [-1, 1])] -> one PNG with each row's label on its left.

    Small images (CIFAR's 32 x 32) are enlarged by an integer factor (nearest neighbour, so pixels stay
    sharp) until a cell is at least `min_cell_px` wide.
    """
    from PIL import Image, ImageDraw, ImageFont

    cols = max(len(images) for _, images in rows)
    h, w = rows[0][1].shape[1:3]
    scale = max(1, -(-min_cell_px // max(h, w)))
    font = ImageFont.load_default()
    pad, label_w, title_h = 4, 110, 24 if title else 0
    cell_h, cell_w = h * scale, w * scale
    canvas = Image.new("RGB", (label_w + cols * (cell_w + pad) + pad, title_h + len(rows) * (cell_h + pad) + pad),
                       "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 6), title, fill="black", font=font)
    for r, (label, images) in enumerate(rows):
        y = title_h + pad + r * (cell_h + pad)
        draw.text((pad, y + cell_h // 2 - 6), label, fill="black", font=font)
        for c, img in enumerate(image_io.to_uint8(np.asarray(images))):
            tile = Image.fromarray(img).resize((cell_w, cell_h), Image.Resampling.NEAREST)
            canvas.paste(tile, (label_w + pad + c * (cell_w + pad), y))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.save(path, format="PNG")
    return path


def check_transmit_options(options) -> list[str]:
    """The --image paths (checked: present, readable, each once); UserError otherwise."""
    return cli.check_images(options.get("images") or [])


def transmit_images(config, workdir, options, reconstruct, num_devices: int) -> list[str]:
    """A user's own images -> reconstructed PNGs (original size) at each SNR in `--snr` (any system).

    Output names never collide or overwrite (`casc_jax.cli.transmit_targets`); process 0 writes them.
    """
    paths = check_transmit_options(options)
    snrs = options.get("snrs") or tuple(config.channel.eval_snrs)
    out_dir = options.get("out_dir") or os.path.join(workdir, "transmit")
    targets = cli.transmit_targets(paths, snrs, out_dir)
    fit = options.get("fit", "pad")
    images, sizes = image_io.load_images_for_transmit(paths, config.data.image_size, fit=fit)
    padded = -len(images) % num_devices  # the batch must split evenly over the devices
    batch = np.concatenate([images, np.zeros((padded,) + images.shape[1:], images.dtype)])
    written = []
    for snr, row in zip(snrs, targets):
        out = parallel.to_host(reconstruct(batch, jax.random.key(int(round(snr * 10))), float(snr)))[: len(images)]
        for target, image, original in zip(row, out, sizes):
            if parallel.is_primary():
                image_io.save_png(image_io.restore_size(image, original, fit=fit), target)
            written.append(target)
    log.info(f"[transmit] wrote {len(written)} file(s) to {out_dir}")
    return written
