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

Both sweeps are `casc_jax.evaluate.snr_sweep` (its multi-host rule: every process reads the global batch)
with its evaluators: `ImageScores` (capped PSNR) and `ConfusionScores`. The paper reports no LPIPS or FID.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from casc_jax import image_io
from casc_jax.evaluate import ConfusionScores, ImageScores, capped_psnr, snr_sweep
from casc_jax.evaluate import reconstructor as end_to_end_reconstructor
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
    """(I (B, H, W, 3), key, snr_db) -> predicted classes (B, H, W) int32."""
    classes = lambda p, x, key, snr: jnp.argmax(model(p, x, SEGMENTATION, key, snr), -1).astype(jnp.int32)  # noqa: E731
    return end_to_end_reconstructor(classes, params, mesh)


def _channel_fields(config, model: MultiTaskSystem) -> dict:
    return {
        "channel": config.channel.kind,
        "channel_uses": model.num_channel_uses,
        "overhead_bits": model.overhead_bits(),
    }


def eval_dir(config, workdir: str, task: str) -> str:
    """WORKDIR/<eval.dir>/<task>: `eval.dir` (default 'eval') lets a second sweep of the same checkpoints
    (e.g. over AWGN) write beside the first."""
    return os.path.join(workdir, config.eval.get("dir") or "eval", task)


def _method(config, method: str) -> str:
    """The records' method name: `eval.method` when set (e.g. 'multitask_awgn'), else `method`."""
    return config.eval.get("method") or method


def size_name(hw: Sequence[int]) -> str:
    """(H, W) -> 'WxH', as the paper writes 768x512."""
    return f"{hw[1]}x{hw[0]}"


def sweep(
    config, task: str, receive: Callable, evaluators: Callable, image_size=None, batches=None, num_images=None
) -> list:
    """`casc_jax.evaluate.snr_sweep` over the config's evaluation split of `task` (at `image_size`, or
    over `batches()`), its SNRs, and its grid SNRs (one outside the sweep, such as Fig. 6's 18 dB on a
    0..20 step 4 sweep, gives the visual row only); the first `num_images` (None: eval.num_images)."""
    mesh = parallel.make_mesh()
    batch_size = config.eval.batch_size
    parallel.check_batch_size(batch_size, mesh)
    if batches is None:
        batches = lambda: mt_train.batches_for_eval(config, task, batch_size=batch_size, image_size=image_size)  # noqa: E731
    return snr_sweep(
        snrs=config.channel.eval_snrs, visual_snrs=config.eval.grid_snrs, batches=batches,
        receive=receive, evaluators=evaluators, mesh=mesh,
        keys=("image", "mask") if task == SEGMENTATION else ("image",),
        num_images=num_images or config.eval.num_images, seed=config.seed, show=config.eval.grid_images,
    )


def by_snr(results) -> dict:
    """{snr_db: SNRResult} of a sweep."""
    return {r.snr_db: r for r in results}


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
    sampler = _sampler(config)
    grid_snrs = [float(g) for g in config.eval.grid_snrs]
    records, figures, grids = [], {}, {}
    for hw in config.data.get("eval_sizes") or (mt_train.image_hw(config),):
        hw = tuple(int(s) for s in hw)
        model = build_model(config, hw)
        run = reconstructor(model, params, mesh, sampler)
        results = sweep(config, RECONSTRUCTION, lambda arrays, key, snr, run=run: run(arrays["image"], key, snr),
                        lambda: [ImageScores({"psnr": capped_psnr})], image_size=hw)
        for res in (r for r in results if r.scores is not None):
            record = {
                "task": RECONSTRUCTION,
                "method": method,
                "size": size_name(hw),
                "height": hw[0],
                "width": hw[1],
                "snr_db": res.snr_db,
                "psnr": res.scores["psnr"],
                **_channel_fields(config, model),
                "sampler": sampler.get("name"),
                "steps": sampler.get("steps") or None,
                "num_images": res.num_images,
                "seconds": res.seconds,
            }
            records.append(record)
            log.info(f"[eval] reconstruction {record['size']} SNR {res.snr_db:g} dB: PSNR {record['psnr']:.2f} dB "
                     f"({res.num_images} images)")
        shown = by_snr(results)
        rows = [("original", image_io.to_uint8(results[0].shown["image"]))]
        rows += [(f"SNR {s:g} dB", image_io.to_uint8(shown[s].shown["output"])) for s in grid_snrs]
        figures[size_name(hw)] = rows
        grids[f"source_{size_name(hw)}"] = rows[0][1]
        grids.update({f"{method}_{size_name(hw)}_snr{s:g}": image for (_, image), s in zip(rows[1:], grid_snrs)})
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
def segmentation_record(config, method: str, res, budget: Mapping) -> dict:
    """The record of one scored SNR of a segmentation sweep (`budget`: the channel or bit fields)."""
    record = {
        "task": SEGMENTATION,
        "method": method,
        "size": size_name(mt_train.image_hw(config)),
        "snr_db": res.snr_db,
        **{k: v for k, v in res.scores.items() if not k.startswith("per_class_iou")},
        **budget,
        "num_images": res.num_images,
        "seconds": res.seconds,
        "per_class_iou": res.scores["per_class_iou"],
    }
    return record


def evaluate_segmentation(
    config, params, workdir: str, *, build_model=mt_train.build_model, method: str = METHOD
) -> list[dict]:
    """mIoU and pixel accuracy against SNR over the evaluation split; writes WORKDIR/eval/segmentation/."""
    method = _method(config, method)
    model = build_model(config)
    run = segmenter(model, params, parallel.make_mesh())
    results = sweep(config, SEGMENTATION, lambda arrays, key, snr: run(arrays["image"], key, snr),
                    lambda: [ConfusionScores(model.num_classes)])
    records = []
    for res in (r for r in results if r.scores is not None):
        records.append(segmentation_record(config, method, res, _channel_fields(config, model)))
        log.info(f"[eval] segmentation SNR {res.snr_db:g} dB: mIoU {res.scores['miou']:.4f}, pixel accuracy "
                 f"{res.scores['pixel_accuracy']:.4f} ({res.num_images} images)")
    out_dir = eval_dir(config, workdir, SEGMENTATION)
    if not parallel.is_primary():  # process 0 writes the files
        return records
    write_records(records, out_dir)
    plot_segmentation_vs_snr(records, os.path.join(out_dir, "miou_vs_snr.png"))
    shown, first = by_snr(results), results[0].shown
    grid_snrs = [float(g) for g in config.eval.grid_snrs]
    palette = segmentation_palette(config.data.source)
    rows = [("image", image_io.to_uint8(first["image"])), ("ground truth", colorize_mask(first["mask"], palette))]
    rows += [(f"SNR {s:g} dB", colorize_mask(shown[s].shown["output"], palette)) for s in grid_snrs]
    grids = {"image": rows[0][1], "ground_truth": first["mask"], "palette": palette}
    grids.update({f"{method}_snr{s:g}": shown[s].shown["output"] for s in grid_snrs})
    np.savez_compressed(os.path.join(out_dir, GRIDS_FILE), **grids)
    classes = np.unique(np.concatenate([np.ravel(first["mask"])] + [np.ravel(shown[s].shown["output"])
                                                                   for s in grid_snrs]))
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
    fig.savefig(path, dpi=100, bbox_inches="tight")  # long row labels stay inside
    plt.close(fig)
    return path
