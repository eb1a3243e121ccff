"""The one-off batch-8 check in README.md: five 10-step samplers on the paper-size receiver, compiled first,
then timed interleaved for five rounds.

    PYTHONPATH=. python docs/results/receiver_speed_cpu/batch8_interleaved.py   # from the repository root
"""
import statistics
import time

import jax

from casc_jax.casc.benchmark import receiver_fns
from casc_jax.casc.system import build_casc
from casc_jax.cli import load_config

config = load_config("configs/casc_cr48.py")
model = build_casc(config)
params = model.init(jax.random.key(0))
c_hat = jax.random.normal(jax.random.key(1), (8,) + model.condition_shape)
SAMPLERS = {
    "dpm10 logsnr": {"name": "dpmpp_2m", "steps": 10},
    "dpm10 uniform": {"name": "dpmpp_2m", "steps": 10, "spacing": "uniform"},
    "ddim10 eta0 uniform": {"name": "ddim", "steps": 10, "spacing": "uniform"},
    "ddim10 eta1 uniform": {"name": "ddim", "steps": 10, "eta": 1.0, "spacing": "uniform"},
    "ddim10 eta1 logsnr": {"name": "ddim", "steps": 10, "eta": 1.0},
}
fns = {label: jax.jit(receiver_fns(model, s)[0]) for label, s in SAMPLERS.items()}
for fn in fns.values():  # compile
    jax.block_until_ready(fn(params, c_hat, jax.random.key(2)))
times = {label: [] for label in SAMPLERS}
for _ in range(5):
    for label, fn in fns.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(params, c_hat, jax.random.key(2)))
        times[label].append(time.perf_counter() - start)
for label, runs in times.items():
    print(f"{label:22s} median {statistics.median(runs):.3f} s  {[round(x, 3) for x in runs]}")
