"""The script that wrote benchmark_b256.json and benchmark_b8.json: `--mode=benchmark`'s timing on the
paper-size CASC CR 1/48 (random weights), with the bf16 and DDIM-50 rows left out to fit a quiet window.

    PYTHONPATH=. python docs/results/receiver_speed_cpu/measure.py BATCH OUTDIR   # from the repository root
"""
import sys

from casc_jax import cli
from casc_jax.casc import benchmark
from casc_jax.cli import load_config

cli.show_progress()
batch, out = int(sys.argv[1]), sys.argv[2]
config = load_config("configs/casc_cr48.py")
config.benchmark.update(batch_size=batch, max_timed_steps=20, repeats=3)
V = benchmark.Variant
variants = [
    V("DDPM T=1000", {"name": "ddpm"}),
    V("DDIM 20 steps", {"name": "ddim", "steps": 20}),
    V("DPMPP_2M 20 steps", {"name": "dpmpp_2m", "steps": 20}),
    V("DPMPP_2M 10 steps", {"name": "dpmpp_2m", "steps": 10}),
    V(benchmark.EQUAL_QUALITY, dict(config.benchmark.equal_quality_sampler)),
    V("DDPM T=1000 no CAN", {"name": "ddpm"}, can=False),
    V("DDPM T=1000 per-step dispatch", {"name": "ddpm"}, dispatch="loop"),
]
if batch < 64:
    variants = [variants[0], variants[3], variants[4]]
report = benchmark.speed(config, variants=variants)
benchmark.write_report(report, out)
