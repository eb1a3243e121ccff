"""The 3x3 convolutions of the paper-size CASC receiver in three forms, timed side by side (median ms).

    python -m casc_jax.tools.bench_convs [--batch=256] [--repeats=5] [--out=convs.json]

Forms: XLA's convolution, `nn.dynamic.conv_taps` (a sum of nine shifted-view matmuls, what `conv2d`
runs on maps of at most `taps_max_output_pixels` pixels) and im2col (the nine views concatenated, one
matmul with K = 9 Cin). Shapes: the U-Net's maps (8x8 at 128 channels, 4x4 and 2x2 at 256) and the VQ-f4
decoder's (8x8 at 512, 16x16 at 256, 32x32 at 128). Each row gives GFLOP/s and the max deviation from XLA's
result; the report has the device, the f32 matmul peak and the load average before and after.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from casc_jax.nn.dynamic import conv_taps, shifted_views
from casc_jax.timing import device_description, machine_load, matmul_peak, print_and_save, timed

# (map side, Cin, Cout): U-Net levels, then the decoder's levels
SHAPES = ((8, 128, 128), (8, 256, 128), (4, 256, 256), (2, 256, 256), (8, 512, 512), (16, 256, 256),
          (32, 128, 128), (32, 256, 128))


def conv_xla(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv_im2col(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """SAME, stride 1: the kh*kw shifted views side by side, times the (kh*kw*Cin, Cout) kernel."""
    kh, kw, cin, cout = kernel.shape
    cols = jnp.concatenate(shifted_views(x, (kh, kw)), axis=-1)
    return cols @ kernel.reshape(kh * kw * cin, cout)


FORMS = {"xla": conv_xla, "taps": lambda x, k: conv_taps(x, k, 1, "SAME"), "im2col": conv_im2col}


def rows(batch: int, repeats: int) -> list[dict]:
    out = []
    for side, cin, cout in SHAPES:
        x = jax.random.normal(jax.random.key(0), (batch, side, side, cin))
        kernel = jax.random.normal(jax.random.key(1), (3, 3, cin, cout)) / (3 * cin**0.5)
        flops = 2 * batch * side * side * 9 * cin * cout
        reference = jax.jit(conv_xla)(x, kernel)
        row = {"map": f"{side}x{side}", "cin": cin, "cout": cout}
        for name, form in FORMS.items():
            fn = jax.jit(form)
            _, median, _ = timed(fn, x, kernel, repeats=repeats)
            row[name] = {"ms": 1e3 * median, "gflops": flops / median / 1e9,
                         "max_abs_diff": float(jnp.max(jnp.abs(fn(x, kernel) - reference)))}
        out.append(row)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="", help="JSON file for the report (optional)")
    args = parser.parse_args(argv)
    load_before = machine_load()
    peak = matmul_peak()
    table_rows = rows(args.batch, args.repeats)
    report = {"device": device_description(), "batch": args.batch, "matmul_peak_gflops": peak,
              "load_before": load_before, "load_after": machine_load(), "rows": table_rows}
    header = f"f32 matmul peak {peak:.1f} GFLOP/s; batch {args.batch}"
    table = [header, "| map | Cin->Cout | " + " | ".join(f"{n} ms (GFLOP/s)" for n in FORMS) + " |",
             "|---|---|" + "---|" * len(FORMS)]
    for r in table_rows:
        cells = " | ".join(f"{r[n]['ms']:.2f} ({r[n]['gflops']:.0f})" for n in FORMS)
        table.append(f"| {r['map']} | {r['cin']}->{r['cout']} | {cells} |")
    return print_and_save(report, table, args.out)


if __name__ == "__main__":
    main()
