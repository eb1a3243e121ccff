"""The multi-task paper's comparison from finished workdirs: Figs. 4, 5 and 7, the visual rows, CSV and Markdown.

Reads WORKDIR/eval/reconstruction/ and WORKDIR/eval/segmentation/ (metrics.json and grids.npz, written by
`multitask_jax.evaluate` for our system and the JSCC baselines and by `multitask_jax.baselines.digital_eval`
for the digital ones) of every workdir and writes into OUT/:
  fig4_psnr_<W>x<H>.png    PSNR vs SNR at the smallest evaluated size (Fig. 4, 224x224)
  fig5_psnr_<W>x<H>.png    the same at the largest size, when a second one was evaluated (Fig. 5, 768x512)
  fig7_miou.png            mIoU vs SNR (Fig. 7, top)
  reconstruction.csv/.md   every record; PSNR tables (methods x SNR) per size, best in bold
  segmentation.csv/.md     every record; mIoU and pixel-accuracy tables
  visual_<W>x<H>_snr<S>.png  source, then each method's reconstruction (Fig. 6, at 18 dB when evaluated)
  visual_segmentation_snr<S>.png  image, ground truth, each method's mask (Fig. 7, bottom; at 10 dB when evaluated)
The digital methods' PSNR points are missing where no image was delivered; their mIoU counts a lost image's
pixels as misses (0 where nothing arrived, the paper's Fig. 7 cliff), and a second table gives their mIoU
over the delivered images only. The failures are listed in the CSV (`failures`, of them `unsent`: too large
for the budget; `failure_rate`) and under the tables. The plots and tables are casc_jax.tools.compare's and
casc_jax.evaluate's helpers with this paper's labels.

Use: python launch.py --mode=compare --workdirs=runs/multitask,runs/mt_deepjscc,... [--out=runs/mt_compare]
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np

from casc_jax.evaluate import plot_metrics_vs_snr
from casc_jax.tools import compare as casc_compare
from multitask_jax.baselines.digital_eval import DELIVERED
from multitask_jax.baselines.models import LABELS
from multitask_jax.data import colorize_mask
from multitask_jax.evaluate import GRIDS_FILE
from multitask_jax.tasks import RECONSTRUCTION, SEGMENTATION, TASKS

log = logging.getLogger(__name__)

ORDER = tuple(LABELS)
VISUAL_SNR = {RECONSTRUCTION: 18.0, SEGMENTATION: 10.0}  # the visual rows: Fig. 6's 18 dB; masks at 10 dB
MIOU_DELIVERED = "miou" + DELIVERED  # the digital links' mIoU over the images they delivered
_FIELDS = {
    RECONSTRUCTION: ["method", "label", "size", "snr_db", "psnr", "channel_uses", "overhead_bits", "num_images",
                     "delivered", "failures", "unsent", "failure_rate", "workdir"],
    SEGMENTATION: ["method", "label", "size", "snr_db", "miou", "pixel_accuracy", "mean_class_accuracy",
                   MIOU_DELIVERED, "pixel_accuracy" + DELIVERED, "channel_uses", "overhead_bits", "num_images",
                   "delivered", "failures", "unsent", "failure_rate", "workdir"],
}
_TITLES = {"psnr": "PSNR (dB)", "miou": "mIoU", "pixel_accuracy": "pixel accuracy",
           MIOU_DELIVERED: "mIoU over the delivered images only (digital links)"}


def label(method: str) -> str:
    return LABELS.get(method, method)


def _order(method: str) -> tuple[int, str]:
    return (ORDER.index(method) if method in ORDER else len(ORDER), method)


def _style(method: str, _group: str) -> dict:
    return {"label": label(method), **({"linestyle": "--"} if "qam" in method else {})}


def load(
    workdirs: Sequence[str], eval_dirs: Sequence[str] = ("eval",)
) -> tuple[dict[str, list[dict]], dict[str, dict[str, np.ndarray]]]:
    """({task: records with 'workdir'}, {task: merged grids}) from WORKDIR/<eval dir>/<task>/ for each of
    `eval_dirs` (e.g. also 'eval_awgn'); FileNotFoundError when a workdir has none."""
    import json

    if not workdirs:
        raise ValueError("compare needs workdirs: --workdirs=runs/multitask,runs/mt_deepjscc,...")
    records = {t: [] for t in TASKS}
    grids = {t: {} for t in TASKS}
    for workdir in dict.fromkeys(os.path.normpath(w) for w in workdirs):
        found = False
        for eval_dir in eval_dirs:
            for task in TASKS:
                path = os.path.join(workdir, eval_dir, task, "metrics.json")
                if not os.path.isfile(path):
                    continue
                found = True
                with open(path) as f:
                    records[task] += [dict(r, workdir=workdir) for r in json.load(f)]
                npz = os.path.join(workdir, eval_dir, task, GRIDS_FILE)
                if os.path.isfile(npz):
                    with np.load(npz) as f:
                        merge_grids(grids[task], {key: f[key] for key in f.files}, npz)
        if not found:
            raise FileNotFoundError(f"{workdir}/eval/<task>/metrics.json not found: evaluate it first (--mode=eval)")
    return records, grids


def _is_source(key: str) -> bool:
    return key in ("image", "ground_truth") or key.startswith("source_")


def merge_grids(merged: dict, new: Mapping[str, np.ndarray], origin: str) -> None:
    """Add one evaluation's grids to `merged`, unless they were made on other images than those already
    there (another split, order or count: its rows would sit under the wrong sources), which is logged."""
    clash = [k for k in new if _is_source(k) and k in merged and not np.array_equal(merged[k], new[k])]
    if clash:
        log.warning(f"[compare] {origin}: its visual rows show other images than the first grids "
                    f"({', '.join(clash)} differ); left out of the visual figures")
        return
    for key, value in new.items():
        merged.setdefault(key, value)


def _failure_notes(records: Sequence[Mapping], task: str) -> list[str]:
    scored = "left out of the PSNR" if task == RECONSTRUCTION else "misses in mIoU, left out of the delivered-only mIoU"
    notes = []
    for r in sorted(records, key=lambda r: (_order(r["method"]), r["snr_db"])):
        if r.get("failures"):
            unsent = r.get("unsent")  # None in a record without the split
            why = ("decoding failures" if unsent is None else
                   f"{unsent} too large for the budget at any JPEG quality, {r['failures'] - unsent} decoding failures")
            notes.append(f"- {label(r['method'])}, {r['size']}, {r['snr_db']:g} dB: {r['failures']} of "
                         f"{r['num_images']} images not delivered ({why}; {scored})")
    return notes


def tables(records: Sequence[Mapping], task: str) -> str:
    """Markdown: one table per (size, metric), via casc_jax.tools.compare.markdown_tables."""
    metrics = ("psnr",) if task == RECONSTRUCTION else ("miou", "pixel_accuracy")
    parts = []
    for size in sorted({r["size"] for r in records}, key=lambda s: np.prod([int(v) for v in s.split("x")])):
        at = [dict(r, cr=size) for r in records if r["size"] == size]
        parts.append(casc_compare.markdown_tables(
            at, size, metrics=metrics, titles=_TITLES, lower_is_better=dict.fromkeys(metrics, False),
            label_fn=label, order=_order, heading=f"# {task.capitalize()}, {size}",
        ))
        digital = [r for r in at if MIOU_DELIVERED in r]
        if digital:
            parts.append(casc_compare.markdown_tables(
                digital, size, metrics=(MIOU_DELIVERED,), titles=_TITLES, lower_is_better={MIOU_DELIVERED: False},
                label_fn=label, order=_order, heading="A lost image is a miss above; here it is left out:",
            ))
        uses = sorted({(label(r["method"]), r.get("channel_uses"), r.get("overhead_bits")) for r in at})
        parts.append("Budget per image: " + "; ".join(f"{m} {k} channel uses, {b} bits" for m, k, b in uses))
        notes = _failure_notes(at, task)
        if notes:
            parts.append("Images not delivered:\n" + "\n".join(notes))
    return "\n\n".join(p.strip("\n") for p in parts) + "\n"


def _visual_snr(keys, task: str) -> float | None:
    """The grid SNR nearest to `task`'s VISUAL_SNR among keys '<method>[_<size>]_snr<S>'."""
    snrs = sorted({float(k.rsplit("_snr", 1)[1]) for k in keys if "_snr" in k and not k.endswith("_ok")})
    return min(snrs, key=lambda s: abs(s - VISUAL_SNR[task])) if snrs else None


def visual_rows(grids: Mapping[str, np.ndarray], methods: Sequence[str], task: str, size: str, snr: float) -> list:
    """[(label, uint8 (N, H, W, 3)), ...] for the methods with a grid at `snr` (masks in the grids' `palette`,
    VOC's when absent)."""
    if task == RECONSTRUCTION:
        rows, suffix = [("Source", grids.get(f"source_{size}"))], f"_{size}_snr{snr:g}"
    else:
        palette = grids.get("palette")  # the data's palette (CamVid's for CamVid), saved by the evaluation
        rows = [("Image", grids.get("image")), ("Ground truth", _colour(grids.get("ground_truth"), palette))]
        suffix = f"_snr{snr:g}"
    if rows[0][1] is None:
        return []
    for m in methods:
        images = grids.get(m + suffix)
        if images is None:
            continue
        ok = grids.get(m + suffix + "_ok")
        name = label(m) + (f" ({int((~ok).sum())} failed)" if ok is not None and not ok.all() else "")
        rows.append((name, images if task == RECONSTRUCTION else _colour(images, palette)))
    n = min(len(images) for _, images in rows)
    return [(name, images[:n]) for name, images in rows] if len(rows) > (1 if task == RECONSTRUCTION else 2) else []


def _colour(masks, palette=None):
    return None if masks is None else colorize_mask(np.asarray(masks), palette)


def compare(workdirs: Sequence[str], out_dir: str, eval_dirs: Sequence[str] = ("eval",)) -> list[str]:
    """Write the figures, tables and visual rows of every evaluated task; return the written paths."""
    records, grids = load(workdirs, eval_dirs)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for task in TASKS:
        rows = records[task]
        if not rows:
            continue
        methods = sorted({r["method"] for r in rows}, key=_order)
        csv_path = os.path.join(out_dir, f"{task}.csv")
        casc_compare.write_csv(rows, csv_path, fields=_FIELDS[task], label_fn=label, order=_order)
        md_path = os.path.join(out_dir, f"{task}.md")
        with open(md_path, "w") as f:
            f.write(tables(rows, task))
        written += [csv_path, md_path]
        if task == RECONSTRUCTION:
            sizes = sorted({r["size"] for r in rows}, key=lambda s: np.prod([int(v) for v in s.split("x")]))
            for fig, size in zip(("fig4", "fig5"), (sizes[0], sizes[-1]) if len(sizes) > 1 else sizes[:1]):
                path = os.path.join(out_dir, f"{fig}_psnr_{size}.png")
                at = [dict(r, cr=size) for r in rows if r["size"] == size]
                plot_metrics_vs_snr(at, path, f"PSNR vs SNR, {size}", style=_style, legend_below=True)
                written.append(path)
            visuals = sizes
        else:
            path = os.path.join(out_dir, "fig7_miou.png")
            plot_metrics_vs_snr([dict(r, cr=r["size"]) for r in rows], path, "Segmentation: mIoU vs SNR",
                                style=_style, legend_below=True, metrics=("miou",))
            written.append(path)
            visuals = [rows[0]["size"]]
        for size in visuals:
            snr = _visual_snr([k for k in grids[task] if task == SEGMENTATION or f"_{size}_snr" in k], task)
            shown = visual_rows(grids[task], methods, task, size, snr) if snr is not None else []
            if not shown:
                log.info(f"[compare] {task} {size}: no saved grids to show side by side")
                continue
            name = f"visual_{size}_snr{snr:g}.png" if task == RECONSTRUCTION else f"visual_segmentation_snr{snr:g}.png"
            path = os.path.join(out_dir, name)
            casc_compare.visual_grid(shown, path, f"{task}, {size}, SNR {snr:g} dB")
            written.append(path)
    for path in written:
        log.info(f"[compare] wrote {path}")
    return written
