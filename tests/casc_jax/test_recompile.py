"""Recompile guards: the jitted CASC train steps and the reconstructor compile once, then only run.

New data, keys and SNRs of the same shapes must hit the jit cache (`compile_count` in conftest.py counts
XLA backend compilations).
"""

import jax
import numpy as np
import optax

from casc_jax.casc.system import build_casc
from casc_jax.casc.train import initial_states, make_stage1_step, make_stage2_step, stage1_parts
from casc_jax.evaluate import casc_reconstructor
from casc_jax.train import parallel
from configs import casc_base


def _tiny():
    c = casc_base.base_config(preset="smoke")
    c.autoencoder.update(ch=8, num_codes=32)
    c.unet.update(ch=16, head_dim=16)
    c.diffusion.num_timesteps = 10
    c.train.stage1.update(lpips_weight=0.0, disc_start=1, disc_layers=1)
    return c


def _batches(n, seed=0):
    rs = np.random.RandomState(seed)
    return [{"image": rs.uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)} for _ in range(n)]


def test_train_steps_compile_once(compile_count):
    c = _tiny()
    model, mesh = build_casc(c), parallel.make_mesh()
    tx = optax.adam(1e-4)
    states = initial_states(model, c, jax.random.key(0))
    states = parallel.replicate({k: v.replace(opt_state=tx.init(v.params)) for k, v in states.items()}, mesh)
    disc, _ = stage1_parts(model, c.train.stage1)
    step1 = parallel.jit_data_parallel(make_stage1_step(model, c.train.stage1, disc, tx, tx, 0), mesh)
    step2 = parallel.jit_data_parallel(make_stage2_step(model, c.train.stage2, (5.0, 20.0), tx, 0), mesh)
    batches = [parallel.shard_batch(b, mesh) for b in _batches(4)]
    s1, s2 = states["stage1"], states["stage2"]
    s1, _ = step1(s1, batches[0], None)
    s2, _ = step2(s2, batches[0], s1.params)
    jax.block_until_ready((s1, s2))
    compile_count.reset()
    for batch in batches[1:]:
        s1, m1 = step1(s1, batch, None)
        s2, m2 = step2(s2, batch, s1.params)
    jax.block_until_ready((s1, s2, m1, m2))
    assert compile_count.count == 0, f"{compile_count.count} recompilations of the train steps"
    assert int(s1.step) == 4 and int(s2.step) == 4


def test_reconstructor_compiles_once(compile_count):
    c = _tiny()
    model, mesh = build_casc(c), parallel.make_mesh()
    params = model.init(jax.random.key(0))
    reconstruct = casc_reconstructor(model, params, mesh, {"name": "ddim", "steps": 2})
    images = [b["image"] for b in _batches(3, seed=1)]
    keys = [jax.random.key(i) for i in range(3)]
    jax.block_until_ready(reconstruct(images[0], keys[0], 5.0))
    compile_count.reset()
    for x, key, snr in zip(images[1:], keys[1:], (10.0, 20.0)):
        out = reconstruct(x, key, snr)
    jax.block_until_ready(out)
    assert compile_count.count == 0, f"{compile_count.count} recompilations of the reconstructor"
    assert out.shape == images[0].shape
