"""Evaluation of the separated digital baselines against SNR, failures reported (paper Figs. 4, 5 and 7).

WORKDIR/eval/segmentation/    JPEG + LDPC + QAM + FCN: mIoU, pixel accuracy over the delivered images,
                              per modulation and SNR (methods 'fcn_digital_16qam', 'fcn_digital_64qam')
WORKDIR/eval/reconstruction/  JPEG + LDPC + QAM: PSNR of the delivered images at every `recon_data.eval_sizes`
                              (methods 'jpeg_ldpc_16qam', 'jpeg_ldpc_64qam')
Both write metrics.json / metrics.csv and a plot (`multitask_jax.evaluate`), and grids.npz for the comparison.
Every record has `num_images`, `delivered`, `failures` and `failure_rate`; a score is null when no image
was delivered. Failed images are masked out of the confusion matrix and the PSNR; they are never
replaced by a guess. The link runs on the host process (one process; not for multi-host evaluation).
"""

from __future__ import annotations

import logging
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from casc_jax import image_io
from casc_jax.batching import Stream
from casc_jax.evaluate import PSNR_CAP_DB
from casc_jax.metrics import segmentation as seg_metrics
from casc_jax.metrics.image import psnr
from multitask_jax import data as mt_data
from multitask_jax import evaluate as mt_eval
from multitask_jax import train as mt_train
from multitask_jax.baselines.fcn_digital import FCNDigital
from multitask_jax.tasks import RECONSTRUCTION, SEGMENTATION

log = logging.getLogger(__name__)


def received(result, shape) -> tuple[np.ndarray, np.ndarray]:
    """A `LinkResult` -> (images (N, H, W, 3) float in [-1, 1] with zeros where failed, delivered (N,) bool)."""
    out = np.zeros(shape, np.float32)
    for i, im in enumerate(result.images):
        if im is not None:
            out[i] = im.astype(np.float32) / 127.5 - 1.0
    return out, np.asarray(result.ok, bool)


def _counts(num_images: int, delivered: int) -> dict:
    return {
        "num_images": num_images,
        "delivered": delivered,
        "failures": num_images - delivered,
        "failure_rate": (num_images - delivered) / num_images if num_images else None,
    }


def _say(kind: str, r: dict, score: str) -> None:
    log.info(f"[eval] {r['method']} {kind} SNR {r['snr_db']:g} dB: {score} "
             f"({r['delivered']} of {r['num_images']} delivered, {r['failures']} decoding failures)")


def segmentation_sweep(model: FCNDigital, params, config) -> tuple[list[dict], dict]:
    """Records per (modulation, SNR) and the grids {key: uint8/int arrays} of the first batch."""
    segment = jax.jit(lambda p, x: jnp.argmax(model.segment(p, x), -1).astype(jnp.int32))
    k = model.num_classes
    records, grids = [], {}
    snrs, _, visual_only = mt_eval.eval_and_grid_snrs(config)
    for mod in model.modulations:
        link, method = model.link(mod), f"fcn_digital_{mod}"
        for snr in snrs + visual_only:
            started, seen, got = time.perf_counter(), 0, 0
            total = np.zeros((k, k), np.int64)
            batches = mt_train.batches_for_eval(config, SEGMENTATION, batch_size=config.eval.batch_size)
            for i, batch in enumerate(batches):
                if (config.eval.num_images and seen >= config.eval.num_images) or (i and snr in visual_only):
                    break
                valid = mt_eval._limited_valid(batch["valid"], seen, config.eval.num_images)
                key = jax.random.fold_in(jax.random.key(config.seed), i)
                images, ok = received(link.transmit(key, batch["image"], snr), batch["image"].shape)
                ok &= valid
                mask = np.where(ok[:, None, None], batch["mask"], seg_metrics.VOC_IGNORE_INDEX).astype(np.int32)
                pred = np.asarray(segment(params, images))
                total += np.asarray(seg_metrics.confusion_matrix(pred, mask, k), np.int64)
                seen, got = seen + int(valid.sum()), got + int(ok.sum())
                if i == 0:
                    grids.setdefault("image", image_io.to_uint8(batch["image"][valid]))
                    grids.setdefault("ground_truth", np.asarray(batch["mask"])[valid])
                    grids.setdefault("palette", mt_data.segmentation_palette(config.data.source))
                    grids[f"{method}_snr{snr:g}"] = np.where(ok[valid, None, None], pred[valid], 255)
            if snr in visual_only:
                continue
            scores = seg_metrics.segmentation_metrics(total) if got else dict.fromkeys(
                ("miou", "pixel_accuracy", "mean_class_accuracy"))
            iou = np.asarray(seg_metrics.per_class_iou(total), np.float64)
            record = {
                "task": SEGMENTATION, "method": method, "size": mt_eval._size_name(mt_train.image_hw(config)),
                "snr_db": snr, **scores, **model.budget_fields(mod), **_counts(seen, got),
                "seconds": round(time.perf_counter() - started, 2),
                "per_class_iou": [None if math.isnan(v) or not got else float(v) for v in iou],
            }
            records.append(record)
            _say("segmentation", record, "no image delivered" if not got else f"mIoU {record['miou']:.4f}")
    return records, grids


def recon_batches(config, hw):
    """One pass over `config.recon_data` at (H, W) (the reconstruction data of the comparison)."""
    cfg = dict(config.recon_data.to_dict(), image_size=tuple(hw))
    stream = Stream.single_pass(config.eval.batch_size)
    return mt_data.make_reconstruction_dataset(cfg, config.recon_data.eval_split, stream)


def reconstruction_sweep(model: FCNDigital, config) -> tuple[list[dict], dict]:
    """The digital reconstruction curve: PSNR of the delivered images per (size, modulation, SNR)."""
    records, grids = [], {}
    snrs, _, visual_only = mt_eval.eval_and_grid_snrs(config)
    for hw in (tuple(int(s) for s in hw) for hw in config.recon_data.eval_sizes):
        size = mt_eval._size_name(hw)
        for mod in model.modulations:
            link, method = model.link(mod), f"jpeg_ldpc_{mod}"
            for snr in snrs + visual_only:
                started, seen, scores = time.perf_counter(), 0, []
                for i, batch in enumerate(recon_batches(config, hw)):
                    if (config.eval.num_images and seen >= config.eval.num_images) or (i and snr in visual_only):
                        break
                    valid = mt_eval._limited_valid(batch["valid"], seen, config.eval.num_images)
                    key = jax.random.fold_in(jax.random.key(config.seed), i)
                    result = link.transmit(key, batch["image"], snr)
                    images, ok = received(result, batch["image"].shape)
                    ok &= valid
                    scores.append(np.minimum(np.asarray(psnr(batch["image"], images)), PSNR_CAP_DB)[ok])
                    seen += int(valid.sum())
                    if i == 0:
                        grids.setdefault(f"source_{size}", image_io.to_uint8(batch["image"][valid]))
                        shown = np.where(ok[:, None, None, None], image_io.to_uint8(images), 0)  # failed: black
                        grids[f"{method}_{size}_snr{snr:g}"] = shown[valid]
                        grids[f"{method}_{size}_snr{snr:g}_ok"] = ok[valid]
                if snr in visual_only:
                    continue
                got = np.concatenate(scores)
                record = {
                    "task": RECONSTRUCTION, "method": method, "size": size, "height": hw[0], "width": hw[1],
                    "snr_db": snr, "psnr": float(np.mean(got)) if len(got) else None,
                    **model.budget_fields(mod), **_counts(seen, len(got)),
                    "seconds": round(time.perf_counter() - started, 2),
                }
                records.append(record)
                shown = "no image delivered" if record["psnr"] is None else f"PSNR {record['psnr']:.2f} dB"
                _say(f"reconstruction {size}", record, shown)
    return records, grids


def evaluate(config, params, workdir: str) -> list[dict]:
    """Both sweeps; writes WORKDIR/eval/segmentation/ and WORKDIR/eval/reconstruction/."""
    from multitask_jax.baselines.models import build_model

    model = build_model(config)
    seg, seg_grids = segmentation_sweep(model, params, config)
    rec, rec_grids = reconstruction_sweep(model, config)
    for task, records, grids in ((SEGMENTATION, seg, seg_grids), (RECONSTRUCTION, rec, rec_grids)):
        out = os.path.join(workdir, "eval", task)
        mt_eval.write_records(records, out)
        np.savez_compressed(os.path.join(out, mt_eval.GRIDS_FILE), **grids)
        if task == SEGMENTATION:
            mt_eval.plot_segmentation_vs_snr(records, os.path.join(out, "miou_vs_snr.png"))
        else:
            mt_eval.plot_psnr_vs_snr(records, os.path.join(out, "psnr_vs_snr.png"))
    return seg + rec
