"""Evaluation of the separated digital baselines against SNR, failures reported (paper Figs. 4, 5 and 7).

WORKDIR/eval/segmentation/    JPEG + LDPC + QAM + FCN: mIoU and pixel accuracy per modulation and SNR
                              (methods 'fcn_digital_16qam', 'fcn_digital_64qam') over every image, a lost
                              image's labelled pixels all wrong (miou, pixel_accuracy: the paper's reading
                              of Fig. 7, where the scheme scores nothing below its cliff), and over the
                              delivered images only (miou_delivered, pixel_accuracy_delivered, ...)
WORKDIR/eval/reconstruction/  JPEG + LDPC + QAM: PSNR of the delivered images at every `recon_data.eval_sizes`
                              (methods 'jpeg_ldpc_16qam', 'jpeg_ldpc_64qam')
Both write metrics.json / metrics.csv and a plot (`multitask_jax.evaluate`), and grids.npz for the comparison.
Every record has `num_images`, `delivered`, `failures` (= `unsent`: no JPEG quality fits the budget, +
`decoding_failures`: the LDPC code failed) and `failure_rate`; a score is null when no image
was delivered (the PSNR, and the *_delivered segmentation scores). A failed image is never replaced by
a guess: it is masked out of the PSNR, and in the segmentation scores over every image it is a miss.
Both sweeps are `multitask_jax.evaluate.sweep`s: every process runs the link on the host over the whole
global batch with the same keys, so any number of processes gives the same records.
"""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from casc_jax import image_io
from casc_jax.batching import Stream
from casc_jax.evaluate import ConfusionScores, Delivered, ImageScores, capped_psnr
from casc_jax.metrics import segmentation as seg_metrics
from casc_jax.train import parallel
from multitask_jax import data as mt_data
from multitask_jax import evaluate as mt_eval
from multitask_jax.baselines.fcn_digital import FCNDigital
from multitask_jax.tasks import RECONSTRUCTION, SEGMENTATION

log = logging.getLogger(__name__)
DELIVERED = "_delivered"  # the suffix of the segmentation scores over the delivered images only


def received(result, shape) -> tuple[np.ndarray, np.ndarray]:
    """A `LinkResult` -> (images (N, H, W, 3) float in [-1, 1] with zeros where failed, delivered (N,) bool)."""
    out = np.zeros(shape, np.float32)
    for i, im in enumerate(result.images):
        if im is not None:
            out[i] = im.astype(np.float32) / 127.5 - 1.0
    return out, np.asarray(result.ok, bool)


def _counts(res) -> dict:
    """The delivery fields of a record: failures = unsent (no JPEG quality fits the budget, at any SNR)
    + decoding failures (the channel code failed)."""
    failures = res.num_images - res.delivered
    return {
        "num_images": res.num_images,
        "delivered": res.delivered,
        "failures": failures,
        "unsent": res.unsent,
        "decoding_failures": failures - res.unsent,
        "failure_rate": failures / res.num_images if res.num_images else None,
    }


def _say(kind: str, r: dict, score: str) -> None:
    log.info(f"[eval] {r['method']} {kind} SNR {r['snr_db']:g} dB: {score} ({r['delivered']} of {r['num_images']} "
             f"delivered; {r['unsent']} too large to send, {r['decoding_failures']} decoding failures)")


def _receiver(link, decode=None):
    """The link as a sweep's receiver: (arrays, key, snr) -> Delivered(decoded images, delivered), the
    received images (zeros where decoding failed) passed through `decode` when given."""

    def receive(arrays, key, snr):
        x = parallel.to_host(arrays["image"])
        result = link.transmit(key, x, snr)
        images, ok = received(result, x.shape)
        return Delivered(images if decode is None else decode(images), ok, unsent=result.quality == 0)

    return receive


def segmentation_sweep(model: FCNDigital, params, config) -> tuple[list[dict], dict]:
    """Records per (modulation, SNR) and the grids {key: uint8/int arrays} of the first images."""
    segment = jax.jit(lambda x: jnp.argmax(model.segment(params, x), -1).astype(jnp.int32))
    records, grids = [], {}
    for mod in model.modulations:
        method = f"fcn_digital_{mod}"
        results = mt_eval.sweep(config, SEGMENTATION, _receiver(model.link(mod), segment), lambda: [
            ConfusionScores(model.num_classes, lost_as_wrong=True),
            ConfusionScores(model.num_classes, suffix=DELIVERED)])
        for res in results:
            grids.setdefault("image", image_io.to_uint8(res.shown["image"]))
            grids.setdefault("ground_truth", res.shown["mask"])
            grids.setdefault("palette", mt_data.segmentation_palette(config.data.source))
            grids[f"{method}_snr{res.snr_db:g}"] = np.where(res.shown["delivered"][:, None, None],
                                                            res.shown["output"], seg_metrics.VOC_IGNORE_INDEX)
            if res.scores is None:
                continue
            fields = model.budget_fields(mod) | _counts(res)
            record = mt_eval.segmentation_record(config, method, res, fields)
            records.append(record)
            said = f"mIoU {record['miou']:.4f}, " + (f"{record['miou' + DELIVERED]:.4f} over the delivered images"
                                                     if res.delivered else "no image delivered")
            _say("segmentation", record, said)
    return records, grids


def recon_batches(config, hw):
    """One pass over `config.recon_data` at (H, W) (the reconstruction data of the comparison)."""
    cfg = dict(config.recon_data.to_dict(), image_size=tuple(hw))
    stream = Stream.evaluation(config.eval.batch_size)
    return mt_data.make_reconstruction_dataset(cfg, config.recon_data.eval_split, stream)


def reconstruction_sweep(model: FCNDigital, config) -> tuple[list[dict], dict]:
    """The digital reconstruction curve: PSNR of the delivered images per (size, modulation, SNR)."""
    records, grids = [], {}
    for hw in (tuple(int(s) for s in hw) for hw in config.recon_data.eval_sizes):
        size = mt_eval.size_name(hw)
        for mod in model.modulations:
            method = f"jpeg_ldpc_{mod}"
            results = mt_eval.sweep(config, RECONSTRUCTION, _receiver(model.link(mod)),
                                    lambda: [ImageScores({"psnr": capped_psnr})],
                                    batches=lambda hw=hw: recon_batches(config, hw),
                                    num_images=config.recon_data.get("eval_images"))
            for res in results:
                ok = res.shown["delivered"]
                grids.setdefault(f"source_{size}", image_io.to_uint8(res.shown["image"]))
                shown = np.where(ok[:, None, None, None], image_io.to_uint8(res.shown["output"]), 0)  # failed: black
                grids[f"{method}_{size}_snr{res.snr_db:g}"] = shown
                grids[f"{method}_{size}_snr{res.snr_db:g}_ok"] = ok
                if res.scores is None:
                    continue
                record = {
                    "task": RECONSTRUCTION, "method": method, "size": size, "height": hw[0], "width": hw[1],
                    "snr_db": res.snr_db, "psnr": res.scores["psnr"],
                    **model.budget_fields(mod), **_counts(res),
                    "seconds": res.seconds,
                }
                records.append(record)
                said = "no image delivered" if record["psnr"] is None else f"PSNR {record['psnr']:.2f} dB"
                _say(f"reconstruction {size}", record, said)
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
