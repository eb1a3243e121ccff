"""Publish a reproduction: metrics.csv, the comparison figures and results.md with the paper's claims checked.

`publish(root, out, jobs, ...)` reads the finished jobs of `casc_jax.tools.reproduce` under `root` (each
workdir's eval/metrics.json, job_*.json and CASC's benchmark_quality.json) and writes into `out`:
metrics.csv (method, cr, snr_db, psnr, lpips, fid, num_images), the figures of `casc_jax.tools.compare`
(comparison_cr48.png, ablation_cr48.png, visual_cr48_snr20.png, ...) and results.md. Every number in
results.md is read from those files; a claim whose inputs are missing is reported as not measured.
"""

from __future__ import annotations

import csv
import datetime
import json
import logging
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence

from casc_jax import channel as ch
from casc_jax.tools import compare

log = logging.getLogger(__name__)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CSV_COLUMNS = ("method", "cr", "snr_db", "psnr", "lpips", "fid", "num_images")
SNR_HIGH = 20.0
COMPARABLE_LPIPS = "CASC's LPIPS is comparable to DiffSC's (within 10%) at 20 dB, CR 1/48 (Sec. IV-B)"


def _load(path: str):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def eval_records(root: str, jobs: Sequence) -> list[dict]:
    """Every evaluated job's eval/metrics.json records, in job order (`jobs`: `reproduce.Job`s)."""
    records = []
    for job in jobs:
        path = os.path.join(root, job.config, "eval", "metrics.json")
        if job.mode == "train" and getattr(job, "main", True) and os.path.exists(path):
            with open(path) as f:
                saved = json.load(f)
            records += saved["records"] if isinstance(saved, dict) else saved  # {"records", "unavailable"}
    return records


def write_metrics_csv(records: Sequence[Mapping], path: str) -> None:
    """metrics.csv with CSV_COLUMNS (fid empty when unavailable)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r in records:
            writer.writerow(["" if r.get(k) is None else r[k] for k in CSV_COLUMNS])


def git_commit(repo: str) -> str:
    try:
        out = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _at(records: Sequence[Mapping], family: str, cr: str, snr: float) -> Mapping | None:
    return next(
        (r for r in records if compare.family(r["method"]) == family and r["cr"] == cr and r["snr_db"] == snr), None
    )


def _curve(records: Sequence[Mapping], method: str, metric: str) -> list[tuple[float, float]]:
    rows = [r for r in records if r["method"] == method and r.get(metric) is not None]
    rows.sort(key=lambda r: r["snr_db"])
    return [(r["snr_db"], r[metric]) for r in rows]


def refines(records: Sequence[Mapping], diffsc: str, cr: str = "1/48") -> tuple[str, bool | None, str]:
    """The claim that a DiffSC family's PSNR is at or above its DeepJSCC (MSE) condition's at every SNR."""
    text = f"{compare.label(diffsc)} PSNR at or above the DeepJSCC (MSE) output it refines at every SNR, CR {cr}"
    pairs = [(r, _at(records, "deepjscc_mse", cr, r["snr_db"])) for r in records
             if compare.family(r["method"]) == diffsc and r["cr"] == cr]
    if not pairs or any(mse is None for _, mse in pairs):
        return text, None, "not measured (a job has not finished)"
    pairs.sort(key=lambda pair: pair[0]["snr_db"])
    shown = ", ".join(f"{r['snr_db']:g} dB: {r['psnr']:.2f} vs {mse['psnr']:.2f}" for r, mse in pairs)
    return text, all(r["psnr"] >= mse["psnr"] for r, mse in pairs), f"PSNR {shown}"


def claims(records: Sequence[Mapping], speed: Mapping | None = None) -> list[tuple[str, bool | None, str]]:
    """(claim, holds or None when not measured, the numbers) for each claim the reproduction checks."""
    out = []
    for method in sorted({r["method"] for r in records}, key=compare._method_order):
        psnr, lpips = _curve(records, method, "psnr"), _curve(records, method, "lpips")
        rises = all(b[1] > a[1] for a, b in zip(psnr, psnr[1:]))
        falls = all(b[1] < a[1] for a, b in zip(lpips, lpips[1:]))
        shown = ", ".join(f"{s:g} dB: {p:.2f}/{lp:.3f}" for (s, p), (_, lp) in zip(psnr, lpips))
        out.append((f"{method}: PSNR rises and LPIPS falls with SNR", rises and falls, f"PSNR/LPIPS at {shown}"))

    def compare_at(text, a, b, cr, metric, snr=SNR_HIGH):
        ra, rb = _at(records, a, cr, snr), _at(records, b, cr, snr)
        if ra is None or rb is None or ra.get(metric) is None or rb.get(metric) is None:
            return out.append((text, None, "not measured (a job has not finished)"))
        va, vb = ra[metric], rb[metric]
        holds = va < vb if compare.LOWER_IS_BETTER[metric] else va > vb
        out.append((text, holds, f"{metric.upper()} at {snr:g} dB: {compare.label(ra['method'])} {va:.4g}, "
                                 f"{compare.label(rb['method'])} {vb:.4g}"))

    mse = _at(records, "deepjscc_mse", "1/48", SNR_HIGH)
    out.append((
        "DeepJSCC (MSE) at CR 1/48, 20 dB reaches 22 dB PSNR",
        None if mse is None else mse["psnr"] >= 22.0,
        "not measured" if mse is None else f"PSNR {mse['psnr']:.2f} dB",
    ))
    for cr, fig in (("1/48", "Fig. 5"), ("1/96", "Fig. 6")):  # "as the SNR increases, CASC outperforms the two"
        for baseline in ("deepjscc_mse", "deepjscc_lpips"):
            for metric in ("psnr", "lpips"):
                compare_at(f"CASC beats {compare.label(baseline)} in {metric.upper()} at 20 dB, CR {cr} ({fig})",
                           "casc", baseline, cr, metric)
    compare_at("CASC is slightly inferior to DiffSC in PSNR at 20 dB, CR 1/48 (Sec. IV-B)", "diffsc", "casc", "1/48",
               "psnr")
    casc, diffsc = _at(records, "casc", "1/48", SNR_HIGH), _at(records, "diffsc", "1/48", SNR_HIGH)
    if casc is None or diffsc is None:
        out.append((COMPARABLE_LPIPS, None, "not measured (a job has not finished)"))
    else:
        gap = casc["lpips"] / diffsc["lpips"] - 1
        out.append((COMPARABLE_LPIPS, abs(gap) <= 0.1,
                    f"LPIPS at 20 dB: CASC {casc['lpips']:.4g}, DiffSC {diffsc['lpips']:.4g} ({100 * gap:+.1f}%)"))
    for diffsc in ("diffsc", "diffsc_v"):  # DiffSC's own paper: its output above the DeepJSCC image it refines
        out.append(refines(records, diffsc))
    for snr in (5.0, 10.0, 15.0, 20.0):
        for metric in ("psnr", "lpips"):
            compare_at(f"CASC beats CASC without CAN in {metric.upper()} at {snr:g} dB, CR 1/48 (Fig. 8)",
                       "casc", "casc_nocan", "1/48", metric, snr)
    if speed:
        casc, diffsc = speed.get("casc_ms"), speed.get("diffsc_ms")
        out.append(("CASC's receiver is faster than DiffSC's (Table I)", casc < diffsc,
                    f"{casc:.1f} vs {diffsc:.1f} ms/image ({speed.get('what', '')})"))
    else:
        out.append(("CASC's receiver is faster than DiffSC's (Table I)", None, "not measured"))
    return out


def speed_claim(report: Mapping | None) -> dict | None:
    """CASC's and DiffSC's full-chain (T = 1000) receiver times from a `--mode=benchmark` report."""
    if not report:
        return None
    casc = report["rows"][0]  # the scanned CASC chain of the config's sampler
    diffsc = next((r for r in report["rows"] if r["variant"].startswith("DiffSC")), None)
    if diffsc is None:
        return None
    what = f"{casc['variant']} vs {diffsc['variant']}, batch {casc['batch']}, {report['device']}"
    return {"casc_ms": casc["ms_per_image"], "diffsc_ms": diffsc["ms_per_image"], "what": what}


def _mark(holds: bool | None) -> str:
    return {True: "holds", False: "**does not hold**", None: "not measured"}[holds]


QUALITY_HEADER = [
    "| sampler | ms/image | PSNR vs source (dB) | LPIPS vs source | PSNR vs DDPM (dB) | LPIPS vs DDPM |",
    "|---|---|---|---|---|---|",
]


# The workdirs whose --mode=quality report gets a section: CASC (eps, the paper's) and its v-prediction variant.
QUALITY_WORKDIRS = {"casc_cr48": "CASC (CR 1/48)", "casc_cr48_v": "CASC with a v-prediction denoiser (CR 1/48)"}


def _quality_rows(rows) -> list[str]:
    lines = []
    for r in rows:
        lp_src, lp_ddpm = r.get("lpips_vs_source", float("nan")), r.get("lpips_vs_ddpm", float("nan"))
        lines.append(
            f"| {r['sampler']} | {r['ms_per_image']:.1f} | {r['psnr_vs_source']:.2f} | {lp_src:.4f} "
            f"| {r['psnr_vs_ddpm']:.2f} | {lp_ddpm:.4f} |"
        )
    return lines


def quality_table(report: Mapping) -> str:
    """The sampler quality rows of `--mode=quality` as Markdown (and, with distilled students, their short
    tables at the other SNRs: DDPM, the equal-quality setting and the students)."""
    lines = [
        f"{report['num_images']} test images at {report['snr_db']:g} dB, one channel draw shared by all samplers; "
        f"timed on {report['device']}.",
        "",
        *QUALITY_HEADER,
        *_quality_rows(report["rows"]),
    ]
    best = report.get("fastest_within_tolerance") or report.get("fastest_within_0.3db")
    rows, ddpm = report["rows"][1:], report["rows"][0]
    if best != ddpm["sampler"] or not rows:
        lines += ["", f"Fastest sampler within 0.3 dB PSNR and 0.01 LPIPS of the 1000-step DDPM: **{best}**."]
    else:
        closest = max(rows, key=lambda r: r["psnr_vs_source"])
        gap = ddpm["psnr_vs_source"] - closest["psnr_vs_source"]
        lines += ["", f"**No fast sampler stays within 0.3 dB PSNR and 0.01 LPIPS of the 1000-step DDPM.** The "
                  f"closest in PSNR, {closest['sampler']}, is {gap:.2f} dB below it at {closest['ms_per_image']:.1f} "
                  f"against {ddpm['ms_per_image']:.1f} ms/image."]
    for other in report.get("other_snrs", ()):
        lines += ["", f"The distilled students at {other['snr_db']:g} dB (same images, one channel draw):", "",
                  *QUALITY_HEADER, *_quality_rows(other["rows"])]
    return "\n".join(lines)


def publish(root: str, out: str, jobs, args, source: str) -> str:
    """Write metrics.csv, the figures and results.md for the jobs finished under `root`; return results.md."""
    os.makedirs(out, exist_ok=True)
    records = eval_records(root, jobs)
    write_metrics_csv(records, os.path.join(out, "metrics.csv"))
    workdirs = [os.path.join(root, j.config) for j in jobs if j.mode == "train" and getattr(j, "main", True)]
    written = compare.compare([w for w in workdirs if os.path.exists(os.path.join(w, "eval", "metrics.json"))], out)
    figures = [os.path.basename(p) for p in written if p.endswith(".png")]
    for name in os.listdir(out):  # the per-CR CSV duplicates metrics.csv with absolute workdirs in it
        if name.startswith("comparison_") and name.endswith(".csv"):
            os.remove(os.path.join(out, name))
    job_rows, finished = [], 0
    for job in jobs:
        record = _load(os.path.join(root, job.config, getattr(job, "record", f"job_{job.mode}.json")))
        finished += record is not None
        minutes = f"{record['seconds'] / 60:.1f}" if record else "not run"
        job_rows.append(f"| {job.name} | {job.mode} | {minutes} | {record.get('commit', '') if record else ''} |")
    quality = {w: _load(os.path.join(root, w, "benchmark_quality.json")) for w in QUALITY_WORKDIRS}
    speed = speed_claim(_load(os.path.join(root, "casc_cr48", "benchmark.json")))
    crs = sorted({r["cr"] for r in records}, key=ch.parse_ratio, reverse=True)
    lines = [
        "# CIFAR-10 on 2 CPU cores: every CASC-paper system, trained and compared",
        "",
        f"Written {datetime.date.today().isoformat()} at commit `{git_commit(REPO)}` on "
        f"{platform.machine()} ({os.cpu_count()} CPU cores).",
        "",
        f"Status: {finished} of {len(jobs)} jobs finished"
        + ("." if finished == len(jobs) else "; the rest are marked 'not run' below and their claims 'not measured'."),
        "",
        "Command (resumable; a rerun skips finished jobs):",
        "",
        f"    python -m casc_jax.tools.reproduce --data={args.data} --workdir={args.workdir} --out={args.out}",
        "",
        "Data: the CIFAR-10 training set (50,000 images) for training and a fixed subset of 2,000 of the 10,000 test "
        "images for evaluation, " + ("read from the JPEG copies (quality 75, lossy; not the bit-exact CIFAR-10) of "
        "the project's shared data" if source.startswith("npz:") else "from TFDS cifar10") + ". The models are the "
        "`cpu` presets of each config (small widths and short schedules sized for this machine: see the presets' "
        "docstrings), not the paper's. Numbers at this scale test the direction of the paper's claims, not its "
        "absolute values.",
        "",
        "## Wall time per job (minutes, this machine; other work shared the cores during the first runs)",
        "",
        "| job | mode | minutes | commit |",
        "|---|---|---|---|",
        *job_rows,
        "",
        "## Results",
        "",
    ]
    for cr in crs:
        lines.append(compare.markdown_tables([r for r in records if r["cr"] == cr], cr))
        lines.append("")
    lines += ["## The paper's claims at this scale", "", "| claim | verdict | numbers |", "|---|---|---|"]
    lines += [f"| {c} | {_mark(h)} | {d} |" for c, h, d in claims(records, speed)]
    for workdir, title in QUALITY_WORKDIRS.items():
        lines += ["", f"## Samplers on the trained {title}", ""]
        report = quality[workdir]
        lines.append(quality_table(report) if report else f"Not measured yet (job quality_{workdir}).")
    lines += ["", f"Figures: {', '.join(figures) or 'none yet'}.",
              "What the numbers do not show (visual checks, known flaws of a run) is in findings.md.", ""]
    path = os.path.join(out, "results.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    log.info(f"[reproduce] wrote {path}")
    return path
