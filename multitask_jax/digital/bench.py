"""Digital-baseline benchmark: LDPC decoder throughput and BLER waterfalls; prints tables, writes JSON.

    PYTHONPATH=. python -m multitask_jax.digital.bench [--out digital_bench.json] [--quick]

Throughput: decoded information bits per second of the jitted min-sum decoder (`decoder.decoder`),
at batch 1 and a large batch, median of repeats, compile excluded (casc_jax.timing.timed), for
the waterfall code and for the 20-Kbit link's code block, both with a fixed 20 iterations and with
early stopping at an operating point.
Waterfall: BLER of K' = 500, E = 1000 (BG2, Z = 64) with QPSK on AWGN against Eb/N0, and the Eb/N0
where it crosses 1e-2, next to the published figure for the same code (Sionna's 5G LDPC tutorial,
20 iterations of sum-product BP). Link operating points: block BLER against Es/N0 for the blocks of
`DigitalLink` at R = 1/2 for each modulation within the paper's 20 Kbit budget.
A block counts as an error when its information bits are wrong or its parity checks fail.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from casc_jax import cli
from casc_jax.timing import device_description, timed
from multitask_jax.digital import ldpc, qam
from multitask_jax.digital.budget import Budget, bits_per_symbol
from multitask_jax.digital.decoder import decoder
from multitask_jax.digital.link import DigitalLink

log = logging.getLogger(__name__)

# NVlabs/sionna, tutorials/phy/5G_Channel_Coding_Polar_vs_LDPC_Codes.ipynb (v1.2.1), "5G LDPC BP-20
# (n=1000)", k = 500, QPSK, AWGN: (Eb/N0 dB, BLER) rows of the printed table around 1e-2.
PUBLISHED_K500_N1000 = ((1.5, 7.4429e-02), (1.75, 1.8852e-02), (2.0, 2.8100e-03), (2.25, 4.5000e-04))


def crossing(points, target: float = 1e-2) -> tuple[float | None, str]:
    """(x, how): where BLER crosses `target`, log-linear between the bracketing points ('interpolated'),
    or the first point with no error after one above target ('upper bound'), or (None, 'not reached')."""
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if y0 >= target > y1:
            if y1 == 0:
                return x1, "upper bound"
            return x0 + (math.log(y0) - math.log(target)) * (x1 - x0) / (math.log(y0) - math.log(y1)), "interpolated"
    return None, "not reached"


def _fmt(cross) -> str:
    x, how = cross
    return "not reached" if x is None else f"{x:.2f} dB ({how})"


def _make_sim(code, modulation, iterations=20, demapper="exact"):
    """Jitted (key, Es/N0 dB, blocks) -> (block errors, iterations used): random info bits, AWGN."""
    decode = decoder(code, iterations)

    def sim(key, snr_db, batch):
        k1, k2 = jax.random.split(key)
        info = jax.random.bernoulli(k1, 0.5, (batch, code.k)).astype(jnp.int32)
        bits = ldpc.rate_match(code, ldpc.encode(code, info))
        y, var = qam.transmit_symbols(k2, qam.modulate(bits, modulation), snr_db)
        out = decode(ldpc.rate_recover(code, qam.demap(y, var, modulation, demapper)))
        wrong = jnp.any(out.info != info, axis=1) | ~out.ok
        return jnp.sum(wrong), jnp.mean(out.iterations)

    return jax.jit(sim, static_argnums=2)


def waterfall(code, modulation, snrs_db, ebn0=True, batch=500, min_errors=100, max_blocks=20_000):
    """Rows {x, bler, errors, blocks, mean_iterations}; x is Eb/N0 (info bits) or Es/N0 in dB."""
    sim = _make_sim(code, modulation)
    offset = 10 * math.log10(code.k / code.e * bits_per_symbol(modulation)) if ebn0 else 0.0
    rows = []
    for i, x in enumerate(snrs_db):
        errors = blocks = 0
        iters = []
        while errors < min_errors and blocks < max_blocks:
            e, it = sim(jax.random.fold_in(jax.random.key(i), blocks), jnp.float32(x + offset), batch)
            errors, blocks = errors + int(e), blocks + batch
            iters.append(float(it))
        rows.append({"x_db": float(x), "bler": errors / blocks, "errors": errors, "blocks": blocks,
                     "mean_iterations": float(np.mean(iters))})
        log.info(f"  {x:6.2f} dB  BLER {errors / blocks:9.3e}  ({errors}/{blocks}, {np.mean(iters):.1f} it)")
        if errors == 0:
            break
    return rows


def throughput(code, batches=(1, 256), repeats=7, ebn0_db=2.5):
    """Info bits/s of the decoder alone, LLRs of QPSK on AWGN at `ebn0_db` prepared beforehand."""
    rows = []
    es = ebn0_db + 10 * math.log10(2 * code.k / code.e)
    for batch in batches:
        key = jax.random.key(batch)
        info = jax.random.bernoulli(key, 0.5, (batch, code.k)).astype(jnp.int32)
        y, var = qam.transmit_symbols(key, qam.modulate(ldpc.rate_match(code, ldpc.encode(code, info)), "qpsk"), es)
        llr = jax.block_until_ready(ldpc.rate_recover(code, qam.demap(y, var, "qpsk")))
        for label, early in (("20 iterations", False), (f"early stop @ {ebn0_db} dB", True)):
            dec = decoder(code, 20, early_stop=early)
            first, median, runs = timed(dec, llr, repeats=repeats)
            its = float(jnp.max(dec(llr).iterations)) if early else 20.0  # loop trips of the batch
            rows.append({"code": repr(code), "batch": batch, "mode": label, "median_s": median, "min_s": min(runs),
                         "compile_s": first, "runs_s": runs, "iterations": its,
                         "info_bits_per_s": batch * code.k / median})
            log.info(f"  {repr(code):55s} batch {batch:4d}  {label:22s} {batch * code.k / median / 1e6:8.3f} Mbit/s"
                     f"  ({median * 1e3:8.2f} ms, {its:.0f} it)")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="digital_bench.json")
    ap.add_argument("--quick", action="store_true", help="fewer blocks and points (a smoke run)")
    ap.add_argument("--large-batch", type=int, default=256)
    args = ap.parse_args(argv)
    cli.show_progress()
    device = device_description()
    print(f"device: {device}")
    report = {"device": device, "jax": jax.__version__, "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    scale = 0.1 if args.quick else 1.0

    code = ldpc.make_code(500, 1000)
    print(f"\nwaterfall: {code}, QPSK, AWGN, normalised min-sum (0.75), 20 iterations")
    rows = waterfall(code, "qpsk", np.arange(0.5, 3.01, 0.25), max_blocks=int(20_000 * scale) or 500,
                     min_errors=int(100 * scale) or 10)
    ours, published = crossing([(r["x_db"], r["bler"]) for r in rows]), crossing(PUBLISHED_K500_N1000)
    print(f"Eb/N0 at BLER 1e-2: ours {_fmt(ours)}, published (Sionna BP-20, same code) {_fmt(published)}")
    report["waterfall"] = {"code": repr(code), "rows": rows, "ebn0_at_1e-2_db": ours,
                           "published_ebn0_at_1e-2_db": published, "published_rows": PUBLISHED_K500_N1000,
                           "published_source": "NVlabs/sionna tutorials/phy/5G_Channel_Coding_Polar_vs_LDPC_Codes"}

    report["link_operating_points"] = {}
    for mod, snrs in (("qpsk", np.arange(1.0, 2.21, 0.1)), ("16qam", np.arange(6.0, 7.41, 0.1)),
                      ("64qam", np.arange(10.4, 11.81, 0.1))):
        link_code = DigitalLink(Budget(), mod, 0.5).plan.code
        print(f"\nlink block, {mod}: {link_code}, BLER vs Es/N0 (= channel SNR)")
        lrows = waterfall(link_code, mod, snrs, ebn0=False, batch=50, min_errors=int(30 * scale) or 5,
                          max_blocks=int(600 * scale) or 100)
        snr = crossing([(r["x_db"], r["bler"]) for r in lrows])
        print(f"SNR at block BLER 1e-2: {_fmt(snr)}")
        report["link_operating_points"][mod] = {"code": repr(link_code), "rows": lrows, "snr_at_1e-2_db": snr}

    print("\nthroughput (decoder only, compile excluded, median of repeats)")
    link_code = DigitalLink(Budget(), "16qam", 0.5).plan.code
    report["throughput"] = throughput(code, (1, args.large_batch)) + throughput(link_code, (1, args.large_batch // 4))
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"\nwrote {args.out}")
    return report


if __name__ == "__main__":
    main()
