"""Evaluation of the multi-task system against SNR (the paper's Figs. 4, 5 and 7): JSON, CSV and PNG.

WORKDIR/eval/reconstruction/
    metrics.json, metrics.csv   one record per (validation size, SNR): PSNR (eq. 2, mean over images of the
                                per-image PSNR on [-1, 1], capped at casc_jax.evaluate.PSNR_CAP_DB)
    psnr_vs_snr.png             one panel per validation size: Fig. 4 (224x224) and Fig. 5 (768x512)
    samples_<W>x<H>.png         originals over their reconstructions at each `eval.grid_snrs` (one outside
                                the sweep is run on the first batch only)
WORKDIR/eval/segmentation/
    metrics.json, metrics.csv   one record per SNR: mIoU, pixel accuracy and mean class accuracy read off
                                the confusion matrix summed over the whole set (casc_jax.metrics.segmentation,
                                VOC label 255 not counted), and the per-class IoU (JSON only)
    miou_vs_snr.png             mIoU and pixel accuracy against SNR (Fig. 7, top)
    masks.png                   images, ground truth and predictions at each grid SNR in the data's palette
                                (VOC's, or CamVid's for a camvid: source; also in grids.npz)
                                (Fig. 7, bottom)

Every record also carries the channel, the number of channel uses and the overhead in bits (the
accounting of multitask_jax.jscc). Sizes are written W x H, as the paper does ("768x512"). grids.npz in
each folder keeps the shown images (uint8 sources, reconstructions, class masks) for multitask_jax.tools.compare.
The same sweeps evaluate the learned baselines (`build_model`, `method`: multitask_jax.baselines).

casc_jax.evaluate.sweep is not reused: it reads CASC's data pipeline (square centre crops of
casc_jax.data.make_dataset), while the multi-task validation needs multitask_jax.data's cover crops at
224x224 and 512x768 and VOC masks, and it always loads LPIPS and FID, which the paper does not report.
Its on-device metric totals (capped PSNR summed inside jit) and the image-grid helpers are reused.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from casc_jax import image_io
from casc_jax.evaluate import MetricTotals, capped_psnr
from casc_jax.evaluate import reconstructor as end_to_end_reconstructor
from casc_jax.metrics import segmentation as seg_metrics
from casc_jax.train import parallel
from multitask_jax import train as mt_train
from multitask_jax.data import colorize_mask, segmentation_palette
from multitask_jax.system import MultiTaskSystem
from multitask_jax.tasks import RECONSTRUCTION, SEGMENTATION, check_task

log = logging.getLogger(__name__)

METHOD = "multitask"
GRIDS_FILE = "grids.npz"


# -- jitted, batch-sharded receivers -------------------------------------------------------------
def reconstructor(model: MultiTaskSystem, params, mesh, sampler: Mapping) -> Callable:
    """(I (B, H, W, 3), key, snr_db) -> reconstruction (B, H, W, 3): transmitter, channel, DiT sampler."""
    sampler = dict(sampler)
    return end_to_end_reconstructor(lambda p, x, key, snr: model(p, x, RECONSTRUCTION, key, snr, sampler), params, mesh)


def segmenter(model: MultiTaskSystem, params, mesh) -> Callable:
    """(I (B, H, W, 3), mask (B, H, W), key, snr_db) -> (predicted classes (B, H, W), confusion (K, K))."""
    num_classes = model.num_classes

    @jax.jit
    def run(params, x, mask, key, snr):
        pred = jnp.argmax(model(params, x, SEGMENTATION, key, snr), axis=-1).astype(jnp.int32)
        return pred, seg_metrics.confusion_matrix(pred, mask, num_classes)

    put = lambda a: parallel.global_batch(a, mesh)  # noqa: E731
    return lambda x, mask, key, snr: run(params, put(x), put(mask), key, jnp.float32(snr))


def _channel_fields(config, model: MultiTaskSystem) -> dict:
    return {
        "channel": config.channel.kind,
        "channel_uses": model.num_channel_uses,
        "overhead_bits": model.overhead_bits(),
    }


def _global(batch, mesh, *keys) -> tuple[dict, dict]:
    """A process-local batch -> (its global arrays, the same gathered to numpy on every process).

    Each process reads its own shard; the outputs of the jitted receivers are gathered in the same
    order as these arrays, so the scores line up with their images on any number of hosts.
    """
    arrays = parallel.shard_batch({k: batch[k] for k in keys}, mesh)
    return arrays, {k: parallel.to_host(v) for k, v in arrays.items()}


def _limited_valid(valid: np.ndarray, seen: int, num_images: int) -> np.ndarray:
    valid = np.asarray(valid).copy()
    if num_images:
        valid &= np.arange(len(valid)) + seen < num_images
    return valid


def eval_dir(config, workdir: str, task: str) -> str:
    """WORKDIR/<eval.dir>/<task>: `eval.dir` (default 'eval') lets a second sweep of the same checkpoints
    (e.g. over AWGN) write beside the first."""
    return os.path.join(workdir, config.eval.get("dir") or "eval", task)


def _method(config, method: str) -> str:
    """The records' method name: `eval.method` when set (e.g. 'multitask_awgn'), else `method`."""
    return config.eval.get("method") or method


def _size_name(hw: Sequence[int]) -> str:
    return f"{hw[1]}x{hw[0]}"  # W x H, as the paper writes 768x512


def eval_and_grid_snrs(config) -> tuple[list[float], list[float], list[float]]:
    """(sweep SNRs, grid SNRs, grid SNRs outside the sweep): a grid SNR the sweep does not evaluate (Fig. 6's
    18 dB on a 0..20 step 4 sweep) is run on the first batch only, for its visual row, and makes no record."""
    snrs = [float(s) for s in config.channel.eval_snrs]
    grid_snrs = [float(g) for g in config.eval.grid_snrs]
    return snrs, grid_snrs, [s for s in grid_snrs if s not in snrs]


# -- reconstruction ------------------------------------------------------------------------------
def _sampler(config) -> dict:
    return config.sampler.to_dict() if "sampler" in config else {}


def evaluate_reconstruction(
    config, params, workdir: str, *, build_model=mt_train.build_model, method: str = METHOD
) -> list[dict]:
    """PSNR against SNR at every `data.eval_sizes` (H, W); writes WORKDIR/eval/reconstruction/.

    `build_model(config, (H, W))` gives the system (ours, or a baseline with the same interface)."""
    method = _method(config, method)
    mesh = parallel.make_mesh()
    batch_size = parallel.check_batch_size(config.eval.batch_size, mesh)
    sampler = _sampler(config)
    snrs, grid_snrs, visual_only = eval_and_grid_snrs(config)
    records, figures, grids = [], {}, {}
    for hw in config.data.get("eval_sizes") or (mt_train.image_hw(config),):
        hw = tuple(int(s) for s in hw)
        model = build_model(config, hw)
        run = reconstructor(model, params, mesh, sampler)
        shown = {}
        for snr in snrs + visual_only:
            started, seen, totals = time.perf_counter(), 0, MetricTotals({"psnr": capped_psnr})
            batches = mt_train.batches_for_eval(config, RECONSTRUCTION, batch_size=batch_size, image_size=hw)
            for i, batch in enumerate(batches):
                if (config.eval.num_images and seen >= config.eval.num_images) or (i and snr in visual_only):
                    break
                arrays, host = _global(batch, mesh, "image", "valid")
                valid = _limited_valid(host["valid"], seen, config.eval.num_images)
                key = jax.random.fold_in(jax.random.key(config.seed), i)
                x_hat = run(arrays["image"], key, snr)
                totals.add(arrays["image"], x_hat, parallel.global_batch(valid, mesh))
                seen += int(valid.sum())
                if i == 0:
                    shown.setdefault("original", host["image"][valid])
                    shown[snr] = parallel.to_host(x_hat)[valid]
            if snr in visual_only:
                continue
            record = {
                "task": RECONSTRUCTION,
                "method": method,
                "size": _size_name(hw),
                "height": hw[0],
                "width": hw[1],
                "snr_db": snr,
                "psnr": totals.means()["psnr"],
                **_channel_fields(config, model),
                "sampler": sampler.get("name"),
                "steps": sampler.get("steps") or None,
                "num_images": seen,
                "seconds": round(time.perf_counter() - started, 2),
            }
            records.append(record)
            log.info(f"[eval] reconstruction {record['size']} SNR {snr:g} dB: PSNR {record['psnr']:.2f} dB "
                     f"({seen} images)")
        n = config.eval.grid_images
        rows = [("original", image_io.to_uint8(shown["original"][:n]))]
        rows += [(f"SNR {s:g} dB", image_io.to_uint8(shown[s][:n])) for s in grid_snrs]
        figures[_size_name(hw)] = rows
        grids[f"source_{_size_name(hw)}"] = rows[0][1]
        grids.update({f"{method}_{_size_name(hw)}_snr{s:g}": image_io.to_uint8(shown[s][:n]) for s in grid_snrs})
    out_dir = eval_dir(config, workdir, RECONSTRUCTION)
    if not parallel.is_primary():  # process 0 writes the files
        return records
    write_records(records, out_dir)
    np.savez_compressed(os.path.join(out_dir, GRIDS_FILE), **grids)
    plot_psnr_vs_snr(records, os.path.join(out_dir, "psnr_vs_snr.png"))
    for name, rows in figures.items():
        save_rows_figure(rows, os.path.join(out_dir, f"samples_{name}.png"), f"Reconstructions ({name})")
    return records


# -- segmentation --------------------------------------------------------------------------------
def evaluate_segmentation(
    config, params, workdir: str, *, build_model=mt_train.build_model, method: str = METHOD
) -> list[dict]:
    """mIoU and pixel accuracy against SNR over the evaluation split; writes WORKDIR/eval/segmentation/."""
    method = _method(config, method)
    mesh = parallel.make_mesh()
    batch_size = parallel.check_batch_size(config.eval.batch_size, mesh)
    model = build_model(config)
    run = segmenter(model, params, mesh)
    snrs, grid_snrs, visual_only = eval_and_grid_snrs(config)
    records, shown = [], {}
    for snr in snrs + visual_only:
        started, seen = time.perf_counter(), 0
        total = np.zeros((model.num_classes,) * 2, np.int64)
        for i, batch in enumerate(mt_train.batches_for_eval(config, SEGMENTATION, batch_size=batch_size)):
            if (config.eval.num_images and seen >= config.eval.num_images) or (i and snr in visual_only):
                break
            arrays, host = _global(batch, mesh, "image", "mask", "valid")
            valid = _limited_valid(host["valid"], seen, config.eval.num_images)
            mask = np.where(valid[:, None, None], host["mask"], seg_metrics.VOC_IGNORE_INDEX).astype(np.int32)
            pred, cm = run(arrays["image"], mask, jax.random.fold_in(jax.random.key(config.seed), i), snr)
            total += parallel.to_host(cm).astype(np.int64)
            seen += int(valid.sum())
            if i == 0:
                shown.setdefault("image", host["image"][valid])
                shown.setdefault("ground truth", mask[valid])
                shown[snr] = parallel.to_host(pred)[valid]
        if snr in visual_only:
            continue
        iou = np.asarray(seg_metrics.per_class_iou(total), np.float64)
        record = {
            "task": SEGMENTATION,
            "method": method,
            "size": _size_name(mt_train.image_hw(config)),
            "snr_db": snr,
            **seg_metrics.segmentation_metrics(total),
            **_channel_fields(config, model),
            "num_images": seen,
            "seconds": round(time.perf_counter() - started, 2),
            "per_class_iou": [None if math.isnan(v) else float(v) for v in iou],
        }
        records.append(record)
        log.info(
            f"[eval] segmentation SNR {snr:g} dB: mIoU {record['miou']:.4f}, pixel accuracy "
            f"{record['pixel_accuracy']:.4f} ({seen} images)"
        )
    out_dir = eval_dir(config, workdir, SEGMENTATION)
    if not parallel.is_primary():  # process 0 writes the files
        return records
    write_records(records, out_dir)
    plot_segmentation_vs_snr(records, os.path.join(out_dir, "miou_vs_snr.png"))
    n = config.eval.grid_images
    rows = [("image", image_io.to_uint8(shown["image"][:n]))]
    palette = segmentation_palette(config.data.source)
    rows.append(("ground truth", colorize_mask(shown["ground truth"][:n], palette)))
    rows += [(f"SNR {s:g} dB", colorize_mask(shown[s][:n], palette)) for s in grid_snrs]
    grids = {"image": rows[0][1], "ground_truth": np.asarray(shown["ground truth"][:n]), "palette": palette}
    grids.update({f"{method}_snr{s:g}": np.asarray(shown[s][:n]) for s in grid_snrs})
    np.savez_compressed(os.path.join(out_dir, GRIDS_FILE), **grids)
    classes = np.unique(np.concatenate([np.ravel(a[:n]) for k, a in shown.items() if k != "image"]))
    save_rows_figure(rows, os.path.join(out_dir, "masks.png"), "Segmentation", legend=classes,
                     source=config.data.source)
    return records


def evaluate(config, params, workdir: str, task: str, **system) -> list[dict]:
    """The sweep of `task`: `evaluate_reconstruction` or `evaluate_segmentation` (`system`: their
    `build_model` and `method`, for a baseline)."""
    if check_task(task) == RECONSTRUCTION:
        return evaluate_reconstruction(config, params, workdir, **system)
    return evaluate_segmentation(config, params, workdir, **system)


# -- files and figures ---------------------------------------------------------------------------
def write_records(records: Sequence[Mapping], out_dir: str) -> None:
    """metrics.json (every field) and metrics.csv (the scalar fields, in record order)."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(list(records), f, indent=2)
    fields = []
    for r in records:
        fields += [k for k, v in r.items() if k not in fields and not isinstance(v, list | tuple | dict)]
    with open(os.path.join(out_dir, "metrics.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _lines(ax, rows: Sequence[Mapping], key: str) -> None:
    """One line per method of `rows` (sorted by SNR); points with no value (nothing delivered) are left out."""
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = [(r["snr_db"], r[key]) for r in rows if r["method"] == method and r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=method)


def plot_psnr_vs_snr(records: Sequence[Mapping], path: str) -> None:
    """PSNR against SNR, one panel per validation size, smallest first (Figs. 4 and 5)."""
    plt = _pyplot()
    pixels = {r["size"]: r["height"] * r["width"] for r in records}
    sizes = sorted(pixels, key=pixels.get)
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.6 * len(sizes), 3.6), squeeze=False)
    for i, (ax, size) in enumerate(zip(axes[0], sizes)):
        rows = sorted((r for r in records if r["size"] == size), key=lambda r: r["snr_db"])
        _lines(ax, rows, "psnr")
        kind = {0: "low-res. (Fig. 4) ", len(sizes) - 1: "high-res. (Fig. 5) "}.get(i, "") if len(sizes) > 1 else ""
        ax.set_title(f"{kind}{size}: {rows[0]['channel_uses']} channel uses, {rows[0]['channel']}", fontsize=10)
        ax.set_xlabel("SNR (dB)")
        ax.set_ylabel("PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_segmentation_vs_snr(records: Sequence[Mapping], path: str) -> None:
    """mIoU and pixel accuracy against SNR (Fig. 7, top)."""
    plt = _pyplot()
    rows = sorted(records, key=lambda r: r["snr_db"])
    fig, axes = plt.subplots(1, 2, figsize=(8.8, 3.6))
    for ax, key, label in zip(axes, ("miou", "pixel_accuracy"), ("mIoU", "pixel accuracy")):
        _lines(ax, rows, key)
        ax.set_xlabel("SNR (dB)")
        ax.set_ylabel(label)
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    bits = rows[0]["overhead_bits"]
    fig.suptitle(f"Segmentation ({rows[0]['size']}, {rows[0]['channel_uses']} channel uses = {bits} bits, "
                 f"{rows[0]['channel']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save_rows_figure(
    rows: Sequence[tuple[str, np.ndarray]], path: str, title: str, legend: Sequence[int] | None = None,
    source: str | None = None,
) -> str:
    """A labelled grid: one row per (label, uint8 images (N, H, W, 3)), the label left of each row.

    `legend`: class indices whose palette colours and names are listed under the grid, in the palette and
    class names of the segmentation data.source `source` (VOC's when None; CamVid's for 'camvid:...').
    """
    plt = _pyplot()
    n = max(len(images) for _, images in rows)
    h, w = rows[0][1].shape[1:3]
    cell = 1.5
    extra = 0.5 if legend is not None and len(legend) else 0.0
    fig, axes = plt.subplots(
        len(rows), n, figsize=(1.2 + cell * n * w / h * 1.0, cell * len(rows) + 0.5 + extra), squeeze=False
    )
    for r, (label, images) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(images):
                ax.imshow(images[c], interpolation="nearest")
        axes[r, 0].set_ylabel(label, fontsize=9)
    fig.suptitle(title, fontsize=10)
    if extra:
        from matplotlib.patches import Patch

        from multitask_jax.data import segmentation_classes

        cmap = segmentation_palette(source) if source else segmentation_palette("embedded")
        class_names = segmentation_classes(source or "embedded")
        names = lambda c: class_names[c] if c < len(class_names) else "void"  # noqa: E731
        handles = [Patch(color=cmap[int(c)] / 255.0, label=names(int(c))) for c in legend]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, extra / (cell * len(rows) + 0.5 + extra), 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
