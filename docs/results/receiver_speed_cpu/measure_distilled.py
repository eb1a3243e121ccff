"""The script that wrote benchmark_b256_distilled_quiet.json: `--mode=benchmark`'s distilled rows (1 and 2
steps at batch 256 and 8) and per-part rows on the paper-size CASC CR 1/48 (random weights), for a window
with the machine quiet; `DECODE_BATCH` (default the config's 16; 0 = the whole batch) sets
`receiver.decode_batch`.

    PYTHONPATH=. python docs/results/receiver_speed_cpu/measure_distilled.py OUTDIR [DECODE_BATCH]
"""
import sys

from casc_jax import cli
from casc_jax.casc import benchmark
from casc_jax.cli import load_config

cli.show_progress()
out = sys.argv[1]
config = load_config("configs/casc_cr48.py")
if len(sys.argv) > 2:
    config.receiver.decode_batch = int(sys.argv[2])
config.benchmark.update(repeats=3)
report = benchmark.speed(config, variants=benchmark.distilled_variants(config))
report["parts"] = benchmark.receiver_parts(config, peak=report["matmul_peak_gflops"])
benchmark.write_report(report, out)
