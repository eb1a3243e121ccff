"""Step time of one progressive-distillation round's train step on a CASC preset (random weights), to size
`train.distill.num_steps` (configs/casc_base.py `_cpu`).

    python -m casc_jax.tools.bench_distill_step [--config=configs/casc_cr48.py:cpu] [--steps=36] [--batch=64]

Times the real step (`train.casc.make_distill_stage_step`: the frozen encoder and channel, the teacher's two DDIM
evaluations, the student's forward and backward, Adam and EMA) after compiling it, and prints the median, mean,
10th and 90th percentile seconds per step with the load average (on a shared machine, upper bounds).
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from casc_jax.casc import train as casc_train
from casc_jax.casc.system import build_casc
from casc_jax.cli import load_config
from casc_jax.train import distill as distill_train
from casc_jax.train import parallel


def measure(config, steps: int = 36, batch: int = 64) -> dict:
    """{'compile_s', 'median_s', 'mean_s', 'p10_s', 'p90_s', 'load_average'} of `steps` timed distill steps."""
    d = config.train.distill
    model = build_casc(config)
    mesh = parallel.make_mesh()
    params = model.init(jax.random.key(0))
    tx = casc_train._optimizer(d, batch)
    rounds = casc_train.distill_rounds(config) or (max(1, (d.get("teacher_steps") or 8) // 2),)
    step = casc_train.make_distill_stage_step(model, d, tuple(config.channel.train_snrs), rounds[0], tx, 0)
    state = distill_train.initial_student_state({k: params[k] for k in casc_train.DISTILL_PARTS}, tx, ema=True)
    frozen = {"teacher": {k: params[k] for k in casc_train.DISTILL_PARTS},
              "aux": {"autoencoder": params["autoencoder"], "cond_encoder": params["cond_encoder"]}}
    jitted = parallel.jit_data_parallel(step, mesh)
    x = np.random.RandomState(0).uniform(-1, 1, (batch, *model.image_shape)).astype(np.float32)
    b = {"image": jnp.asarray(x)}
    start = time.perf_counter()
    state, m = jitted(state, b, frozen)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, m = jitted(state, b, frozen)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - start)
    t = np.asarray(times)
    return {"compile_s": compile_s, "median_s": float(np.median(t)), "mean_s": float(t.mean()),
            "p10_s": float(np.percentile(t, 10)), "p90_s": float(np.percentile(t, 90)),
            "load_average": [round(v, 2) for v in os.getloadavg()], "steps": steps, "batch": batch}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/casc_cr48.py:cpu")
    parser.add_argument("--steps", type=int, default=36)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args(argv)
    print(measure(load_config(args.config), args.steps, args.batch))


if __name__ == "__main__":
    main()
