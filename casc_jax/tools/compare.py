"""The CASC paper's comparisons from finished evaluations: figures and tables side by side.

Reads WORKDIR/eval/metrics.json (and eval/reconstructions.npz) of several workdirs, as written by
`casc_jax.evaluate.sweep` for CASC and the baselines, and writes into OUT/, per CR (tag 'cr48' for 1/48):
  comparison_<cr>.png   PSNR, LPIPS and FID against SNR, one line per method (the paper's Figs. 5 and 6;
                        the no-CAN ablation is left to its own figure)
  comparison_<cr>.csv   every record (method, label, cr, snr_db, psnr, lpips, fid, ..., workdir)
  comparison_<cr>.md    one table per metric: methods x SNRs, the best value of each column in bold
  ablation_<cr>.png     CASC against CASC without CAN (Fig. 8), when both were evaluated at that CR
  visual_<cr>_snr20.png the same test images: source, then each method's reconstruction at 20 dB (Fig. 7)
The visual grid reads the reconstructions each evaluation saved (no model is rebuilt or sampled again);
every workdir's evaluation must have used the same test images (checked).

Use: python launch.py --mode=compare --workdirs=runs/a,runs/b,... [--out=runs/compare]
  or python -m casc_jax.tools.compare --workdirs=runs/a,runs/b,... [--out=runs/compare]

The paper's comparison at CR 1/48, one command per method (append :smoke to every config, and _smoke to
every workdir, for the offline CPU version), then the comparison:
  for c in casc_cr48 casc_cr48_nocan deepjscc_mse_cr48 deepjscc_lpips_cr48 diffsc_cr48; do
    python launch.py --config=configs/$c.py --workdir=runs/$c; done
  python launch.py --mode=compare --out=runs/compare \
    --workdirs=runs/deepjscc_mse_cr48,runs/deepjscc_lpips_cr48,runs/diffsc_cr48,runs/casc_cr48,runs/casc_cr48_nocan
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence

import numpy as np

from casc_jax import channel as ch
from casc_jax import cli, image_io
from casc_jax.evaluate import METRICS, RECONSTRUCTIONS_FILE, plot_metrics_vs_snr, read_metrics, reconstruction_key

log = logging.getLogger(__name__)

# Known method families (a config name without its CR tag), in the paper's order, with labels and colours.
FAMILIES = {
    "deepjscc_mse": ("DeepJSCC (MSE)", "tab:blue"),
    "deepjscc_lpips": ("DeepJSCC (LPIPS)", "tab:orange"),
    "diffsc": ("DiffSC", "tab:green"),
    "diffsc_v": ("DiffSC (v-prediction)", "tab:olive"),
    "casc_nocan": ("CASC w/o CAN", "tab:purple"),
    "casc": ("CASC", "tab:red"),
    "casc_v": ("CASC (v-prediction)", "tab:brown"),
}
ABLATION = ("casc", "casc_nocan")
LOWER_IS_BETTER = {"psnr": False, "lpips": True, "fid": True}
METRIC_TITLES = {"psnr": "PSNR (dB)", "lpips": "LPIPS", "fid": "FID"}
_REQUIRED = ("method", "cr", "snr_db", "psnr")


def family(method: str) -> str:
    """A method's name without its CR tag: 'casc_cr48_nocan' -> 'casc_nocan', 'diffsc_cr96' -> 'diffsc'."""
    return re.sub(r"_cr\d+(_\d+)?", "", method)


def label(method: str) -> str:
    """The display name of a method: the paper's for known families, else the method name itself."""
    return FAMILIES.get(family(method), (method, None))[0]


def cr_tag(cr: str) -> str:
    """'1/48' -> 'cr48', '3/96' -> 'cr3_96' (for file names)."""
    ratio = ch.parse_ratio(cr)
    return f"cr{ratio.denominator}" if ratio.numerator == 1 else f"cr{ratio.numerator}_{ratio.denominator}"


def _method_order(method: str) -> tuple[int, str]:
    names = list(FAMILIES)
    f = family(method)
    return (names.index(f) if f in names else len(names), method)


def _style(method: str, cr: str) -> dict:
    color = FAMILIES.get(family(method), (None, None))[1]
    return {"label": label(method), **({"color": color} if color else {})}


# -- reading ---------------------------------------------------------------------------------------
def load_metrics(workdirs: Sequence[str]) -> list[dict]:
    """The records of every workdir's eval/metrics.json, each with its 'workdir' added.

    Raises FileNotFoundError for a workdir without an evaluation, ValueError for a malformed file or
    for two workdirs that report the same (method, CR) (their lines would be indistinguishable).
    """
    if not workdirs:
        raise ValueError("compare needs at least one workdir: --workdirs=runs/casc_cr48,runs/deepjscc_mse_cr48,...")
    records, owner = [], {}
    for workdir in dict.fromkeys(os.path.normpath(w) for w in workdirs):  # each workdir once, in order
        path = os.path.join(workdir, "eval", "metrics.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} not found: evaluate that workdir first (python launch.py --config=... "
                f"--workdir={workdir} --mode=eval)"
            )
        try:
            rows, _ = read_metrics(path)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); rerun --mode=eval for {workdir}") from err
        if not isinstance(rows, list) or not rows:
            raise ValueError(f"{path} holds no records (expected a non-empty list); rerun --mode=eval for {workdir}")
        for row in rows:
            missing = [k for k in _REQUIRED if k not in row]
            if missing:
                raise ValueError(f"a record of {path} lacks {missing}; rerun --mode=eval for {workdir}")
            key = (row["method"], row["cr"])
            if owner.setdefault(key, workdir) != workdir:
                raise ValueError(
                    f"method {key[0]!r} at CR {key[1]} is reported by both {owner[key]} and {workdir}; "
                    "compare one workdir per method"
                )
            records.append(dict(row, workdir=workdir))
    return records


def load_reconstructions(workdir: str, snr: float) -> tuple[np.ndarray, np.ndarray] | None:
    """(sources, reconstructions at `snr`), both (N, H, W, 3) uint8, or None when not saved."""
    path = os.path.join(workdir, "eval", RECONSTRUCTIONS_FILE)
    if not os.path.isfile(path):
        return None
    with np.load(path) as f:
        key = reconstruction_key(snr)
        if key not in f.files:
            return None
        return f["source"], f[key]


# -- tables ----------------------------------------------------------------------------------------
_CSV_FIELDS = ["method", "label", "cr", "snr_db", "psnr", "lpips", "fid", "sampler", "steps", "num_images", "workdir"]


def write_csv(
    records: Sequence[Mapping], path: str, fields: Sequence[str] = _CSV_FIELDS, label_fn=None, order=None
) -> None:
    """Every record, methods in `order` then by SNR, with the display name from `label_fn`."""
    label_fn, order = label_fn or label, order or _method_order
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        for r in sorted(records, key=lambda r: (order(r["method"]), r["snr_db"])):
            writer.writerow(dict(r, label=label_fn(r["method"])))


def _fmt(metric: str, value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.2f}" if metric in ("psnr", "fid") else f"{value:.4f}"


def markdown_tables(
    records: Sequence[Mapping],
    cr: str,
    *,
    metrics: Sequence[str] = METRICS,
    titles: Mapping[str, str] = METRIC_TITLES,
    lower_is_better: Mapping[str, bool] = LOWER_IS_BETTER,
    label_fn=None,
    order=None,
    heading: str | None = None,
) -> str:
    """One Markdown table per metric (rows: methods, columns: SNRs), the best of each column in bold.

    The keyword arguments let another comparison (multitask_jax.tools.compare) use its own metrics and labels."""
    label_fn, order = label_fn or label, order or _method_order
    methods = sorted({r["method"] for r in records}, key=order)
    snrs = sorted({r["snr_db"] for r in records})
    value = {(r["method"], r["snr_db"], m): r.get(m) for r in records for m in metrics}
    lines = [heading or f"# Comparison at CR {cr}", ""]
    for metric in metrics:
        arrow = "lower is better" if lower_is_better[metric] else "higher is better"
        lines += [f"## {titles[metric]} ({arrow})", ""]
        lines.append("| method | " + " | ".join(f"{s:g} dB" for s in snrs) + " |")
        lines.append("|---|" + "---:|" * len(snrs))
        best = {}
        for s in snrs:
            vals = [value.get((m, s, metric)) for m in methods]
            vals = [v for v in vals if v is not None]
            if vals:
                best[s] = min(vals) if lower_is_better[metric] else max(vals)
        for m in methods:
            cells = []
            for s in snrs:
                v = value.get((m, s, metric))
                text = _fmt(metric, v)
                cells.append(f"**{text}**" if v is not None and v == best.get(s) and len(methods) > 1 else text)
            lines.append(f"| {label_fn(m)} | " + " | ".join(cells) + " |")
        reasons = sorted({r[f"{metric}_unavailable"] for r in records if r.get(f"{metric}_unavailable")})
        lines += [""] + [f"{titles[metric]} n/a: {reason}" for reason in reasons] + ([""] if reasons else [])
    return "\n".join(lines)


# -- figures ---------------------------------------------------------------------------------------
def plot_comparison(records: Sequence[Mapping], path: str, title: str) -> None:
    """PSNR, LPIPS and FID against SNR, one line per method, paper labels and fixed colours."""
    plot_metrics_vs_snr(records, path, title=title, style=_style, legend_below=True)


def visual_grid(rows: Sequence[tuple[str, np.ndarray]], path: str, title: str | None = None) -> None:
    """One labelled row per entry (label, (N, H, W, 3) uint8 images), the same N images in each row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    strips = [image_io.image_grid(image_io.to_float(images), len(images)) for _, images in rows]
    h, w = strips[0].shape[:2]
    width = min(16.0, 1.8 + 1.1 * len(rows[0][1]))
    fig_h = (width - 1.8) * h / w * len(rows) + (0.5 if title else 0.1)
    fig, axes = plt.subplots(len(rows), 1, figsize=(width, fig_h), squeeze=False)
    for ax, (name, _), strip in zip(axes[:, 0], rows, strips):
        ax.imshow(strip, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=11)
    if title:
        fig.suptitle(title, fontsize=12)
    fig.subplots_adjust(left=1.7 / width, right=0.99, top=1 - (0.45 if title else 0.05) / fig_h, bottom=0.02,
                        hspace=0.05)
    fig.savefig(path, dpi=110, bbox_inches="tight")  # long row labels stay inside
    plt.close(fig)


def visual_rows(methods: Sequence[tuple[str, str]], snr: float) -> list[tuple[str, np.ndarray]]:
    """[('Source', x), (label, x_hat), ...] for (method, workdir) pairs with saved reconstructions at `snr`.

    Raises ValueError when two workdirs evaluated different test images.
    """
    rows, reference, missing = [], None, []
    for method, workdir in methods:
        loaded = load_reconstructions(workdir, snr)
        if loaded is None:
            missing.append(workdir)
            continue
        source, recon = loaded
        if reference is None:
            reference = (workdir, source)
            rows.append(("Source", source))
        n = min(len(reference[1]), len(source))
        if not np.array_equal(reference[1][:n], source[:n]):
            raise ValueError(
                f"{workdir} and {reference[0]} were evaluated on different test images; evaluate every "
                "method with the same data.source, data.eval_split and eval.grid_images"
            )
        rows.append((label(method), recon))
    if missing:
        log.info(f"[compare] no reconstructions at {snr:g} dB in {missing} (evaluate them again with --mode=eval)")
    n = min((len(images) for _, images in rows), default=0)
    return [(name, images[:n]) for name, images in rows]


# -- the mode --------------------------------------------------------------------------------------
def compare(workdirs: Sequence[str], out_dir: str, *, snr: float = 20.0) -> list[str]:
    """Write the comparison figures, tables, ablation figure and visual grid; return the written paths."""
    records = load_metrics(workdirs)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for cr in sorted({r["cr"] for r in records}, key=lambda c: ch.parse_ratio(c), reverse=True):
        tag = cr_tag(cr)
        at_cr = [r for r in records if r["cr"] == cr]
        methods = sorted({(r["method"], r["workdir"]) for r in at_cr}, key=lambda mw: _method_order(mw[0]))
        main = [r for r in at_cr if family(r["method"]) != "casc_nocan"] or at_cr
        path = os.path.join(out_dir, f"comparison_{tag}.png")
        plot_comparison(main, path, f"CR {cr}: PSNR, LPIPS and FID against SNR")
        written.append(path)
        write_csv(at_cr, os.path.join(out_dir, f"comparison_{tag}.csv"))
        with open(os.path.join(out_dir, f"comparison_{tag}.md"), "w") as f:
            f.write(markdown_tables(at_cr, cr))
        written += [os.path.join(out_dir, f"comparison_{tag}.{ext}") for ext in ("csv", "md")]
        ablation = [r for r in at_cr if family(r["method"]) in ABLATION]
        if {family(r["method"]) for r in ablation} == set(ABLATION):
            path = os.path.join(out_dir, f"ablation_{tag}.png")
            plot_comparison(ablation, path, f"Ablation at CR {cr}: CASC with and without CAN")
            written.append(path)
        else:
            log.info(f"[compare] CR {cr}: no ablation figure (needs both CASC and CASC without CAN evaluated)")
        rows = visual_rows([mw for mw in methods if family(mw[0]) != "casc_nocan"], snr)
        if len(rows) > 1:
            path = os.path.join(out_dir, f"visual_{tag}_snr{snr:g}.png")
            visual_grid(rows, path, f"CR {cr}, SNR {snr:g} dB")
            written.append(path)
    for path in written:
        log.info(f"[compare] wrote {path}")
    return written


def main(argv: Sequence[str] | None = None) -> list[str]:
    """`python -m casc_jax.tools.compare --workdirs=a,b,c [--out=DIR] [--snr=20]`."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdirs", required=True, help="comma-separated workdirs with eval/metrics.json")
    parser.add_argument("--out", default=os.path.join("runs", "compare"), help="output folder")
    parser.add_argument("--snr", type=float, default=20.0, help="SNR (dB) of the visual comparison")
    args = parser.parse_args(argv)
    cli.show_progress()
    workdirs = [w for w in args.workdirs.split(",") if w]
    return compare(workdirs, args.out, snr=args.snr)


if __name__ == "__main__":
    main()
