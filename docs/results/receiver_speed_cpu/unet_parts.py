"""The one-off U-Net timing in README.md: one paper-size eps call at batch 256, full, without the 4x4/2x2
attention blocks, and without CAN (median of 5).

    PYTHONPATH=. python docs/results/receiver_speed_cpu/unet_parts.py   # from the repository root
"""
import jax
import jax.numpy as jnp

from casc_jax.casc import benchmark
from casc_jax.casc.system import build_casc
from casc_jax.cli import load_config


def one(config, label):
    model = build_casc(config)
    p = model.init(jax.random.key(0))
    B = 256
    c_hat = jax.random.normal(jax.random.key(1), (B,) + model.condition_shape)
    dyn = jax.jit(model.dynamic_weights)(p, c_hat)
    z = jax.random.normal(jax.random.key(2), (B,) + model.latent_shape)
    t = jnp.full((B,), 500, jnp.int32)
    f = jax.jit(lambda p, z, t, c, d: model.eps(p, z, t, c, d))
    _, med, runs = benchmark.timed(f, p, z, t, c_hat, dyn, repeats=5)
    fl = benchmark.flops_of(f, p, z, t, c_hat, dyn)
    print(f"{label:28s} {1e3 * med / B:6.2f} ms/step/image  {fl / B / 1e9:.4f} GFLOP/image  "
          f"{fl / med / 1e9:6.1f} GFLOP/s  runs {[round(r, 2) for r in runs]}", flush=True)


print("load", benchmark.machine_load(), "peak", round(benchmark.matmul_peak(), 1))
base = load_config("configs/casc_cr48.py")
one(base, "full U-Net step")
c = base.copy_and_resolve_references()
c.unet.attn_resolutions = ()
one(c, "no level attention (mid kept)")
c = base.copy_and_resolve_references()
c.can.layers = ()
one(c, "no CAN")
