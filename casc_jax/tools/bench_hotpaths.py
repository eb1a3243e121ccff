"""Hot paths of training, former and current form timed side by side in one run (median seconds).

    python -m casc_jax.tools.bench_hotpaths [--config=configs/casc_cr48.py:smoke] [--repeats=10] [--steps=200]

Rows: the stage-1 step (two full autoencoder backward passes vs one, lambda from the last layer's VJPs),
the fit loop's overhead per step (a host sync per step for the NaN check vs a device-side flag read
at log steps), and the time a checkpoint save blocks training (synchronous vs orbax async). The device
and the load average (before and after) are printed with the table and written to --out as JSON.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from casc_jax.casc import train as casc_train
from casc_jax.casc.discriminator import adaptive_weight
from casc_jax.casc.system import build_casc
from casc_jax.cli import load_config
from casc_jax.timing import device_description, machine_load, print_and_save
from casc_jax.train import loop, parallel
from casc_jax.train.checkpoint import Checkpointer


def two_pass_grads(ae, cfg, disc, lpips, params, d_params, x, key, lpips_vars, active):
    """The former stage-1 gradient: full backward of nll + codebook, another of g_loss (for timing only)."""

    def forward(p):
        x_hat, codebook_loss, _ = ae.apply({"params": p}, x, train=True, rngs={"dropout": key})
        return x_hat, codebook_loss

    (x_hat, codebook_loss), pullback = jax.vjp(forward, params)

    def nll_fn(xh):
        rec = jnp.mean(jnp.abs(x - xh))
        return rec + cfg.lpips_weight * jnp.mean(lpips.apply(lpips_vars, x, xh)) if lpips_vars is not None else rec

    nll, d_nll = jax.value_and_grad(nll_fn)(x_hat)
    (grads,) = pullback((d_nll, jnp.asarray(cfg.codebook_weight, codebook_loss.dtype)))
    metrics = {"nll": nll, "codebook": codebook_loss}
    if disc is not None:
        g_loss, d_gan = jax.value_and_grad(lambda xh: -jnp.mean(disc.apply({"params": d_params}, xh)))(x_hat)
        (grads_gan,) = pullback((d_gan, jnp.zeros_like(codebook_loss)))
        last = lambda g: g["decoder"]["conv_out"]["kernel"]  # noqa: E731
        weight = adaptive_weight(last(grads), last(grads_gan), cfg.disc_weight) * active
        grads = jax.tree.map(lambda a, b: a + weight * b, grads, grads_gan)
        metrics.update(g_loss=g_loss, d_weight=weight)
    return grads, x_hat, metrics


def _median_interleaved(fns: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Median of `repeats` timings of each fn (each returns its own seconds), alternating between them."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(fn())
    return {name: statistics.median(t) for name, t in times.items()}


def stage1_step(config, repeats: int) -> dict[str, float]:
    """Median seconds of one jitted stage-1 step (discriminator active), former vs current gradient."""
    model, mesh, s1 = build_casc(config), parallel.make_mesh(), config.train.stage1
    batch_size = loop.stage_batch_size(config.train, "stage1")
    state = casc_train.initial_states(model, config, jax.random.key(0))["stage1"]
    disc, lpips_vars = casc_train.stage1_parts(model, s1)
    tx = optax.adam(1e-4)
    state = state.replace(step=jnp.int32(max(s1.disc_start, 0)), opt_state=tx.init(state.params))
    state = parallel.replicate(state, mesh)
    lpips_vars = parallel.replicate(lpips_vars, mesh) if lpips_vars is not None else None
    x = np.random.RandomState(0).uniform(-1, 1, (batch_size,) + model.image_shape).astype(np.float32)
    batch = parallel.shard_batch({"image": x}, mesh)
    steps = {}
    for name, grads_fn in (("before", two_pass_grads), ("after", casc_train.stage1_grads)):
        fn = casc_train.make_stage1_step(model, s1, disc, tx, tx, 0, grads_fn=grads_fn)
        steps[name] = parallel.jit_data_parallel(fn, mesh, donate_argnums=())
        jax.block_until_ready(steps[name](state, batch, lpips_vars))  # compile

    def run(name):
        def once():
            start = time.perf_counter()
            jax.block_until_ready(steps[name](state, batch, lpips_vars))
            return time.perf_counter() - start

        return once

    return _median_interleaved({n: run(n) for n in steps}, repeats)


def loop_overhead(num_steps: int, log_every: int, repeats: int) -> dict[str, float]:
    """Median seconds per step of a trivial jitted step under each form of the non-finite check."""

    @jax.jit
    def step_fn(params, x):
        new = params + x
        return new, jnp.all(jnp.isfinite(new))

    xs = [jnp.full((8,), 1e-3 * i, jnp.float32) for i in range(num_steps)]
    params = jnp.zeros((8,), jnp.float32)
    jax.block_until_ready(loop.mark_nonfinite(np.int32(-1), step_fn(params, xs[0])[1], np.int32(1)))

    def before():  # the former loop: step i's flag read on the host while step i + 1 runs
        p, previous, start = params, None, time.perf_counter()
        for i, x in enumerate(xs, 1):
            p, finite = step_fn(p, x)
            if previous is not None:
                assert bool(jax.device_get(previous))
            previous = finite
            if i % log_every == 0:
                assert bool(jax.device_get(finite))
        jax.block_until_ready(p)
        return (time.perf_counter() - start) / num_steps

    def after():  # the current loop: the first bad step kept on the device, read at log steps
        p, first_bad, start = params, np.int32(-1), time.perf_counter()
        for i, x in enumerate(xs, 1):
            p, finite = step_fn(p, x)
            first_bad = loop.mark_nonfinite(first_bad, finite, np.int32(i))
            if i % log_every == 0:
                assert int(jax.device_get(first_bad)) < 0
        jax.block_until_ready(p)
        return (time.perf_counter() - start) / num_steps

    return _median_interleaved({"before": before, "after": after}, repeats)


def checkpoint_blocking(config, repeats: int) -> dict[str, float]:
    """Median seconds a save of the stage-1 state keeps the training thread: waiting for orbax vs not."""
    state = casc_train.initial_states(build_casc(config), config, jax.random.key(0))["stage1"]
    root = tempfile.mkdtemp(prefix="bench_ckpt_")
    ckpts = {name: Checkpointer(f"{root}/{name}", max_to_keep=2, save_every=1) for name in ("before", "after")}
    counter = {"before": 0, "after": 0}

    def run(name, wait):
        def once():
            counter[name] += 1
            ckpts[name].wait()  # the previous save's write is not what this row measures
            start = time.perf_counter()
            ckpts[name].save(counter[name], state, force=True)
            if wait:
                ckpts[name].wait()
            return time.perf_counter() - start

        return once

    try:
        return _median_interleaved({"before": run("before", True), "after": run("after", False)}, repeats)
    finally:
        for c in ckpts.values():
            c.close()
        shutil.rmtree(root, ignore_errors=True)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/casc_cr48.py:smoke")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--steps", type=int, default=200, help="steps per loop-overhead run")
    parser.add_argument("--out", default="", help="JSON file for the report (optional)")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    load_before = machine_load()
    rows = {
        "stage-1 step (s)": stage1_step(config, args.repeats),
        "loop overhead per step (s)": loop_overhead(args.steps, config.train.log_every, args.repeats),
        "checkpoint save blocking (s)": checkpoint_blocking(config, args.repeats),
    }
    report = {"device": device_description(), "config": args.config, "load_before": load_before,
              "load_after": machine_load(), "repeats": args.repeats, "rows": rows}
    table = [f"| {'median of ' + str(args.repeats):<30} | {'before':>10} | {'after':>10} | {'after/before':>12} |",
             f"|{'-' * 32}|{'-' * 12}|{'-' * 12}|{'-' * 14}|"]
    table += [f"| {name:<30} | {t['before']:>10.4g} | {t['after']:>10.4g} | {t['after'] / t['before']:>12.3f} |"
              for name, t in rows.items()]
    return print_and_save(report, table, args.out)


if __name__ == "__main__":
    main()
