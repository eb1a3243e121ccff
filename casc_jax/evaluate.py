"""The one evaluation layer over SNR, and the CASC paper's sweep (Figs. 5-8): PSNR, LPIPS, FID; JSON, CSV, PNG.

`snr_sweep` is every system's evaluation loop (CASC and its baselines here; the multi-task system, its
learned baselines and the digital link in multitask_jax.evaluate): one pass over the evaluation split per
SNR through a receiver, scored by evaluators that keep their sums on the device (`ImageScores`: PSNR,
LPIPS; `FrechetScores`: FID; `ConfusionScores`: mIoU and pixel accuracy) and are read once per SNR. Its
multi-host rule: every process reads the same global batches (`Stream.evaluation`), the sums are
replicated, and process 0 writes the files, so any number of hosts gives the records of one.

`sweep` writes into WORKDIR/eval/: metrics.json (one record per method, CR, SNR, and why a metric is
null), metrics.csv, metrics_vs_snr.png (one panel per metric), samples_snr<SNR>.png (sources over
reconstructions) and reconstructions.npz (the grid's sources and their reconstructions at every SNR,
uint8, for `casc_jax.tools.compare`'s visual comparison). FID needs the pytorch-fid InceptionV3 weights
(casc_jax.metrics.inception); without them it is null, the reason is recorded once in metrics.json, and
the rest of the sweep still runs.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from casc_jax import data as data_lib
from casc_jax import image_io
from casc_jax.batching import Stream
from casc_jax.metrics import fid as fid_lib
from casc_jax.metrics import inception as inception_lib
from casc_jax.metrics import segmentation as seg_metrics
from casc_jax.metrics.image import psnr
from casc_jax.metrics.lpips import load_lpips
from casc_jax.train import parallel

log = logging.getLogger(__name__)

METRICS = ("psnr", "lpips", "fid")
PSNR_CAP_DB = 100.0  # identical images have infinite PSNR; cap before averaging


@jax.jit
def capped_psnr(x: jax.Array, x_hat: jax.Array) -> jax.Array:
    """Per-image PSNR (dB) on [-1, 1], capped at PSNR_CAP_DB so identical images average finitely."""
    return jnp.minimum(psnr(x, x_hat), PSNR_CAP_DB)


@jax.jit
def _add_masked(totals: dict, scores: dict, valid: jax.Array) -> dict:
    valid = valid.astype(bool)
    sums = {k: jnp.sum(jnp.where(valid, v, 0.0)) for k, v in scores.items()}
    return jax.tree.map(jnp.add, totals, dict(sums, count=jnp.sum(valid, dtype=jnp.int32)))


class MetricTotals:
    """Running sums of per-image metrics over the valid images, kept on the device.

    `add(x, x_hat, valid)` scores a batch (each metric is its own jitted call: LPIPS keeps its weights as
    arguments) and adds the masked sums in one jitted reduction, so nothing returns to the host per batch;
    `means()` reads the totals once. Works on global (multi-host) arrays: the sums are replicated.
    """

    def __init__(self, metrics: Mapping[str, Callable[[jax.Array, jax.Array], jax.Array]]):
        self._metrics = dict(metrics)
        self._totals = dict({k: jnp.float32(0.0) for k in self._metrics}, count=jnp.int32(0))

    def add(self, x: jax.Array, x_hat: jax.Array, valid: jax.Array) -> None:
        scores = {k: fn(x, x_hat) for k, fn in self._metrics.items()}
        self._totals = _add_masked(self._totals, scores, valid)

    def means(self) -> dict[str, float]:
        totals = jax.tree.map(parallel.to_host, self._totals)  # replicated: also across processes
        n = max(int(totals["count"]), 1)
        return {k: float(totals[k]) / n for k in self._metrics}

    def count(self) -> int:
        """Valid images added so far."""
        return int(parallel.to_host(self._totals["count"]))


def optional_metric(loader: Callable, name: str):
    """(function, None) or (None, reason) when the metric's weights cannot be loaded."""
    try:
        return loader(), None
    except (FileNotFoundError, ValueError) as err:
        first = str(err).split(". ")[0].split(" (")[0]
        log.warning(f"[eval] {name} unavailable: {first} (the full reason is in eval/metrics.json)")
        return None, str(err)


# -- the one evaluation layer: evaluators and the SNR sweep ---------------------------------------
class Evaluator(Protocol):
    """Scores of one SNR: `add` a batch's receiver output (masked by `valid`: the rows to score, those of
    the pass that were delivered; batch['valid']: the rows of the pass), then `result()` once."""

    def add(self, batch: Mapping[str, jax.Array], output: jax.Array, valid: jax.Array) -> None: ...

    def result(self) -> dict: ...


class ImageScores:
    """Per-image metrics fn(batch['image'], output) averaged over the valid images (`MetricTotals`, on
    the device); every score is None when no image counted (e.g. none delivered)."""

    def __init__(self, metrics: Mapping[str, Callable[[jax.Array, jax.Array], jax.Array]]):
        self._totals, self._names = MetricTotals(metrics), tuple(metrics)

    def add(self, batch, output, valid) -> None:
        self._totals.add(batch["image"], output, valid)

    def result(self) -> dict:
        return self._totals.means() if self._totals.count() else dict.fromkeys(self._names)


class FrechetScores:
    """FID of the outputs against the batch images (InceptionV3 pool3 activations, gathered to the host).

    `real` is shared by the evaluators of one sweep: the real images' statistics are the same at every
    SNR and are computed at the first one only."""

    def __init__(self, inception: Callable, real: dict):
        self._inception, self._real, self._acts_real, self._acts_fake = inception, real, [], []

    def add(self, batch, output, valid) -> None:
        keep = parallel.to_host(valid)
        if "stats" not in self._real:
            self._acts_real.append(parallel.to_host(self._inception(batch["image"]))[keep])
        self._acts_fake.append(parallel.to_host(self._inception(output))[keep])

    def result(self) -> dict:
        fake = np.concatenate(self._acts_fake) if self._acts_fake else np.zeros((0, 1))
        if len(fake) < 2:
            return {"fid": None}
        if "stats" not in self._real:
            self._real["stats"] = fid_lib.activation_statistics(np.concatenate(self._acts_real))
        return {"fid": float(fid_lib.frechet_distance(*self._real["stats"], *fid_lib.activation_statistics(fake)))}


_INT32_MAX = np.iinfo(np.int32).max


class ConfusionScores:
    """mIoU, pixel accuracy and mean class accuracy of predicted classes (output) against batch['mask'],
    read off one confusion matrix summed on the device over the valid images (VOC label 255 and
    invalid rows not counted); also the per-class IoU. Scores are None when no pixel counted.

    lost_as_wrong: also count the images of the pass that were not delivered (batch['valid'] but not
    `valid`: a digital link's decoding failures), every labelled pixel of them a miss of its class (an
    extra "lost" prediction column, K), so that a link that delivers nothing scores 0. `suffix` is added
    to the score names, to keep two readings of one sweep apart.

    The device sum is int32: it is moved into an int64 host total before it could overflow."""

    def __init__(self, num_classes: int, *, lost_as_wrong: bool = False, suffix: str = ""):
        self._k, self._lost, self._suffix = int(num_classes), bool(lost_as_wrong), suffix
        size = self._k + self._lost
        self._device = jnp.zeros((size, size), jnp.int32)
        self._host = np.zeros((size, size), np.int64)
        self._pixels = 0  # an upper bound of the counts in the device sum

    def add(self, batch, output, valid) -> None:
        pixels = int(np.prod(batch["mask"].shape))
        if self._pixels + pixels > _INT32_MAX:
            self._host += parallel.to_host(self._device).astype(np.int64)
            self._device, self._pixels = jnp.zeros_like(self._device), 0
        if self._lost:
            output, valid = _lost_as_class(output, valid, batch["valid"], self._k)
        self._device = _add_confusion(self._device, output, batch["mask"], valid, self._k + self._lost)
        self._pixels += pixels

    def total(self) -> np.ndarray:
        """The (K, K) int64 confusion matrix so far ((K + 1, K + 1) with lost_as_wrong; column K: lost)."""
        return self._host + parallel.to_host(self._device).astype(np.int64)

    def result(self) -> dict:
        total, names = self.total(), ("miou", "pixel_accuracy", "mean_class_accuracy", "per_class_iou")
        if not total.sum():
            scores = dict.fromkeys(names[:3]) | {"per_class_iou": [None] * self._k}
        else:
            iou = np.asarray(seg_metrics.per_class_iou(total), np.float64)[:self._k]  # no IoU of "lost"
            scores = seg_metrics.segmentation_metrics(total) | {
                "miou": float(np.nanmean(iou)), "per_class_iou": [None if math.isnan(v) else float(v) for v in iou]}
        return {name + self._suffix: scores[name] for name in names}


@jax.jit
def _lost_as_class(pred, delivered, valid, lost):
    """Predictions with every pixel of a valid but undelivered image set to class `lost`; all valid rows."""
    return jnp.where((valid & ~delivered)[:, None, None], lost, pred), valid


@partial(jax.jit, static_argnums=4)
def _add_confusion(total, pred, mask, valid, num_classes: int):
    mask = jnp.where(valid.astype(bool)[:, None, None], mask, seg_metrics.VOC_IGNORE_INDEX)
    return total + seg_metrics.confusion_matrix(pred, mask, num_classes)


class Delivered(NamedTuple):
    """A receiver output with the images that arrived (a digital link's failures are False): the
    evaluators count only those, and the sweep reports how many. `unsent` (optional, True where an image
    could not be sent at all, e.g. no source rate fits the budget) is counted apart from channel failures."""

    output: Any
    ok: np.ndarray
    unsent: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class SNRResult:
    """One SNR of a sweep. scores: the evaluators' results merged (None for a visual-only SNR); shown:
    the first `show` valid rows of the batches' arrays and of 'output' (and 'delivered'), on the host;
    unsent: the images a `Delivered` output marked as never sent (also not delivered)."""

    snr_db: float
    scores: dict | None
    shown: dict[str, np.ndarray]
    num_images: int
    delivered: int
    seconds: float
    unsent: int = 0


def limited_valid(valid: np.ndarray, seen: int, num_images: int | None) -> np.ndarray:
    """The batch's valid rows, less those past the first `num_images` of the pass (None or 0: all)."""
    valid = np.asarray(valid, bool).copy()
    if num_images:
        valid &= np.arange(len(valid)) + seen < num_images
    return valid


def snr_sweep(
    *,
    snrs: Sequence[float],
    batches: Callable[[], Iterable[Mapping[str, np.ndarray]]],
    receive: Callable[[Mapping[str, jax.Array], jax.Array, float], Any],
    evaluators: Callable[[], Sequence[Evaluator]],
    mesh,
    keys: Sequence[str] = ("image",),
    num_images: int | None = None,
    seed: int = 0,
    show: int = 8,
    visual_snrs: Sequence[float] = (),
) -> list[SNRResult]:
    """Every system's evaluation loop: one pass of `batches()` per SNR through `receive`, scored by
    fresh `evaluators()`.

    The multi-host rule: `batches()` yields the whole global batch on every process (file order, with a
    bool 'valid' column for padding); its `keys` become global arrays split over the mesh
    (`parallel.global_batch`) and the evaluators' sums are replicated, so any number of hosts gives the
    records of one. `receive(arrays, key, snr_db)` returns the output (or a `Delivered`); the key of batch
    i is fold_in(key(seed), i) at every SNR. A `visual_snrs` entry outside `snrs` runs only until `show`
    rows are shown and is not scored.
    """
    results, scored_snrs = [], [float(s) for s in snrs]
    for snr in scored_snrs + [float(s) for s in visual_snrs if float(s) not in scored_snrs]:
        scored = snr in scored_snrs
        started, seen, delivered, unsent, shown = time.perf_counter(), 0, 0, 0, {}
        scorers = list(evaluators()) if scored else []
        for i, batch in enumerate(batches()):
            if (num_images and seen >= num_images) or (not scored and _rows(shown) >= show):
                break
            arrays = {k: parallel.global_batch(batch[k], mesh) for k in keys}
            valid = limited_valid(batch["valid"], seen, num_images)
            out = receive(arrays, jax.random.fold_in(jax.random.key(seed), i), snr)
            ok = valid & np.asarray(out.ok, bool) if isinstance(out, Delivered) else valid
            if isinstance(out, Delivered) and out.unsent is not None:
                unsent += int((valid & np.asarray(out.unsent, bool)).sum())
            out = out.output if isinstance(out, Delivered) else out
            out = out if isinstance(out, jax.Array) else parallel.global_batch(out, mesh)
            ok_global, scored_rows = parallel.global_batch(ok, mesh), parallel.global_batch(valid, mesh)
            for scorer in scorers:
                scorer.add(arrays | {"valid": scored_rows}, out, ok_global)
            seen, delivered = seen + int(valid.sum()), delivered + int(ok.sum())
            if _rows(shown) < show:
                rows = {k: np.asarray(batch[k]) for k in keys} | {"output": parallel.to_host(out), "delivered": ok}
                for k, v in rows.items():
                    shown[k] = np.concatenate([shown[k], v[valid]]) if k in shown else v[valid]
        scores = {k: v for s in scorers for k, v in s.result().items()} if scored else None
        shown = {k: v[:show] for k, v in shown.items()}
        results.append(SNRResult(snr, scores, shown, seen, delivered, round(time.perf_counter() - started, 2), unsent))
    return results


def _rows(shown: Mapping[str, np.ndarray]) -> int:
    return len(shown["output"]) if shown else 0


def sweep(
    *,
    method: str,
    cr: str,
    reconstruct: Callable[[jax.Array, jax.Array, float], jax.Array],
    data_cfg,
    split: str,
    snrs: Sequence[float],
    batch_size: int,
    num_images: int,
    mesh,
    lpips_net: str = "alex",
    fid_weights: str | None = None,
    grid_images: int = 8,
    sampler: Mapping | None = None,
    workdir: str,
    seed: int = 0,
) -> list[dict]:
    """PSNR, LPIPS and FID of `reconstruct(x, key, snr_db) -> x_hat` at every SNR (`snr_sweep` over
    casc_jax.data's square images); writes WORKDIR/eval/.

    x and x_hat are (B, H, W, 3) in [-1, 1]; `reconstruct` is expected to be jitted and sharded.
    """
    lpips_fn, lpips_reason = optional_metric(lambda: load_lpips(lpips_net), "LPIPS")
    inception, fid_reason = optional_metric(lambda: inception_lib.load_inception(fid_weights or None), "FID")
    parallel.check_batch_size(batch_size, mesh)
    sampler = dict(sampler or {})
    image_metrics = {"psnr": capped_psnr} | ({"lpips": lpips_fn} if lpips_fn is not None else {})
    real = {}  # Inception statistics of the real images: the same at every SNR, computed once

    def evaluators():
        return [ImageScores(image_metrics)] + ([FrechetScores(inception, real)] if inception is not None else [])

    results = snr_sweep(
        snrs=snrs,
        batches=lambda: data_lib.make_dataset(data_cfg, split, Stream.evaluation(batch_size)),
        receive=lambda arrays, key, snr: reconstruct(arrays["image"], key, snr),
        evaluators=evaluators, mesh=mesh, num_images=num_images, seed=seed, show=grid_images,
    )
    records, grids = [], {}
    for res in results:
        record = {
            "method": method,
            "cr": cr,
            "snr_db": res.snr_db,
            "psnr": res.scores["psnr"],
            "lpips": res.scores.get("lpips"),
            "fid": res.scores.get("fid"),
            "sampler": sampler.get("name"),
            "steps": sampler.get("steps") or None,
            "num_images": res.num_images,
            "seconds": res.seconds,
        }
        records.append(record)
        lp = "n/a" if record["lpips"] is None else f"{record['lpips']:.4f}"
        fd = "n/a" if record["fid"] is None else f"{record['fid']:.2f}"
        log.info(f"[eval] {method} CR {cr} SNR {res.snr_db:g} dB: PSNR {record['psnr']:.2f} dB, LPIPS {lp}, "
                 f"FID {fd} ({res.num_images} images)")
        grids[res.snr_db] = np.concatenate([res.shown["image"], res.shown["output"]])
    notes = {}
    if lpips_reason:
        notes["lpips"] = lpips_reason
    if any(r["fid"] is None for r in records):
        notes["fid"] = fid_reason or "fewer than 2 images"
    if parallel.is_primary():
        write_results(records, os.path.join(workdir, "eval"), grids, grid_images, unavailable=notes)
        log.info(f"[eval] metrics.json, metrics.csv, metrics_vs_snr.png and samples in {os.path.join(workdir, 'eval')}")
    return records


def config_sweep(config, workdir: str, reconstruct: Callable, mesh, sampler: Mapping | None) -> list[dict]:
    """`sweep` with a config's name, CR, data, channel and eval sections (every CIFAR system)."""
    return sweep(
        method=config.name,
        cr=config.cr,
        reconstruct=reconstruct,
        data_cfg=config.data,
        split=config.data.eval_split,
        snrs=tuple(config.channel.eval_snrs),
        batch_size=config.eval.batch_size,
        num_images=config.eval.num_images,
        mesh=mesh,
        lpips_net=config.eval.lpips_net,
        fid_weights=config.eval.fid_weights,
        grid_images=config.eval.grid_images,
        sampler=sampler,
        workdir=workdir,
        seed=config.seed,
    )


def write_results(
    records: list[dict], out_dir: str, grids: Mapping[float, np.ndarray], ncols: int,
    unavailable: Mapping[str, str] | None = None,
) -> None:
    """metrics.json, metrics.csv, metrics_vs_snr.png and one sample grid for the highest SNR.

    metrics.json is {"records": [...], "unavailable": {metric: reason}}: why a metric is null is said
    once there, not in every record or CSV row.
    """
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump({"records": records, "unavailable": dict(unavailable or {})}, f, indent=2)
    extra = sorted({k for r in records for k in r} - set(_CSV_ORDER))
    fields = [k for k in _CSV_ORDER if any(k in r for r in records)] + extra
    with open(os.path.join(out_dir, "metrics.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(records)
    plot_metrics_vs_snr(records, os.path.join(out_dir, "metrics_vs_snr.png"))
    if grids:
        save_reconstructions(grids, os.path.join(out_dir, RECONSTRUCTIONS_FILE))
        snr = max(grids)
        image_io.save_png(
            image_io.to_float(image_io.image_grid(grids[snr], ncols)),
            os.path.join(out_dir, f"samples_snr{snr:g}.png"),
        )


def read_metrics(path: str) -> tuple[list[dict], dict]:
    """(records, unavailable) of an eval/metrics.json; also reads the older plain list of records."""
    with open(path) as f:
        saved = json.load(f)
    if isinstance(saved, dict):
        return saved.get("records"), saved.get("unavailable") or {}
    return saved, {}


RECONSTRUCTIONS_FILE = "reconstructions.npz"


def reconstruction_key(snr: float) -> str:
    """The npz key of the reconstructions at `snr` dB: 'snr20', 'snr12.5'."""
    return f"snr{float(snr):g}"


def save_reconstructions(grids: Mapping[float, np.ndarray], path: str) -> None:
    """grids {snr: concat[sources, reconstructions]} (2N, H, W, 3) in [-1, 1] -> npz of uint8 arrays.

    Keys: 'source' (N, H, W, 3), `reconstruction_key(snr)` (N, H, W, 3) per SNR, 'snrs' (S,).
    """
    arrays = {}
    for snr, grid in grids.items():
        n = len(grid) // 2
        arrays["source"] = image_io.to_uint8(grid[:n])
        arrays[reconstruction_key(snr)] = image_io.to_uint8(grid[n:])
    np.savez_compressed(path, snrs=np.asarray(sorted(grids), np.float32), **arrays)


_CSV_ORDER = ["method", "cr", "snr_db", "psnr", "lpips", "fid", "sampler", "steps", "num_images", "seconds"]


_AXIS_LABELS = {"psnr": "PSNR (dB), higher is better", "lpips": "LPIPS, lower is better",
                "fid": "FID, lower is better", "miou": "mIoU, higher is better"}
_UNIT_RANGE = ("lpips", "miou")  # metrics that live in [0, 1]


def _axis_range(metric: str, values: Sequence[float]) -> tuple[float, float]:
    """A y-range that shows the data with a margin: LPIPS within [0, 1], FID from 0, PSNR around the data
    (at least 2 dB tall, so that nearly equal values do not fill the panel with noise)."""
    lo, hi = min(values), max(values)
    span = max(hi - lo, {"psnr": 2.0, "fid": 5.0}.get(metric, 0.05))
    lo, hi = lo - 0.15 * span, hi + 0.15 * span
    if metric in _UNIT_RANGE:
        return max(0.0, lo), min(1.0, hi)
    if metric == "fid":
        return 0.0, hi
    return lo, hi


def plot_metrics_vs_snr(
    records: Sequence[Mapping],
    path: str,
    title: str | None = None,
    style: Callable[[str, str], Mapping] | None = None,
    legend_below: bool = False,
    metrics: Sequence[str] = METRICS,
) -> None:
    """One panel per metric against SNR, one line per (method, CR); metrics with no value (e.g. FID
    without its weights) get no panel.

    `style(method, cr)` optionally returns matplotlib line options (label, color, marker, linestyle)
    that replace the defaults (label "method (CR cr)", marker "o"). `legend_below` puts one legend
    for all panels under them instead of inside the first panel (for many lines).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in metrics if any(r.get(m) is not None for r in records)] or list(metrics[:1])
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    axes = axes[0]
    lines = sorted({(r["method"], r["cr"]) for r in records})
    for ax, metric in zip(axes, metrics):
        values = []
        for method, cr in lines:
            rows = sorted((r for r in records if (r["method"], r["cr"]) == (method, cr)), key=lambda r: r["snr_db"])
            pts = [(r["snr_db"], r[metric]) for r in rows if r.get(metric) is not None]
            if pts:
                line = {"marker": "o", "label": f"{method} (CR {cr})", **(style(method, cr) if style else {})}
                ax.plot(*zip(*pts), **line)
                values += [v for _, v in pts]
        ax.set_xlabel("SNR (dB)")
        ax.set_ylabel(_AXIS_LABELS.get(metric, metric))
        ax.grid(alpha=0.3)
        if values:
            ax.set_ylim(*_axis_range(metric, values))
        snrs = sorted({r["snr_db"] for r in records})
        if 1 < len(snrs) <= 12:
            ax.set_xticks(snrs)
    legend_rows = 0
    if legend_below:  # at most 3 labels per panel's width in a row, so the legend stays inside the figure
        handles, labels = axes[0].get_legend_handles_labels()
        ncol = max(1, min(len(labels), 3 * len(axes)))
        legend_rows = -(-len(labels) // ncol)
        fig.set_figheight(3.4 + 0.25 * legend_rows)
        fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=9, frameon=False)
    else:
        axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07 * legend_rows + 0.01, 1, 1) if legend_below else None)
    fig.savefig(path, dpi=120, bbox_inches="tight")  # long legends and labels stay inside
    plt.close(fig)


def reconstructor(end_to_end: Callable, params, mesh) -> Callable:
    """A jitted, batch-sharded (X, key, snr_db) -> X_hat from any system's `end_to_end(params, X, key, snr)`
    (transmitter, channel, receiver).

    X: (B, H, W, 3), a global array or numpy held in full by every process (`parallel.global_batch`).
    """
    run = jax.jit(end_to_end)
    return lambda x, key, snr: run(params, parallel.global_batch(x, mesh), key, jnp.float32(snr))


def casc_reconstructor(model, params, mesh, sampler: Mapping) -> Callable:
    """`reconstructor` of a CASC model decoding with `sampler`."""
    return reconstructor(lambda p, x, key, snr: model(p, x, key, snr, sampler), params, mesh)
