"""A whole (short) DeepJSCC smoke training ends with the same parameters on 1, 2 and 4 devices.

XLA's all-reduce sums partial gradients in a device-count-dependent order and Adam amplifies the last
bits (without grouping, 1 vs 2 devices differ by ~1e-4 after 10 steps), so equality needs
`train.grad_groups`: fixed groups, summed in a fixed order (casc_jax.train.parallel.value_and_grad).
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from casc_jax.train import parallel

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 4

_TRAIN = textwrap.dedent(
    f"""
    import json, logging, sys, tempfile, jax, numpy as np
    from configs.deepjscc_mse_cr48 import get_config
    from casc_jax.casc.baselines.train import train_baseline
    c = get_config("smoke")
    c.train.update(grad_groups=int(sys.argv[1]), checkpoint_every=1000)
    c.train.deepjscc.update(num_steps={STEPS})
    log = []
    progress = logging.getLogger("casc_jax")
    progress.setLevel(logging.INFO)
    progress.addHandler(type("Lines", (logging.Handler,), {{"emit": lambda self, r: log.append(r.getMessage())}})())
    with tempfile.TemporaryDirectory() as workdir:
        params = train_baseline(c, workdir)
    leaves = [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(params)]
    print("RESULT" + json.dumps({{"log": log, "params": leaves}}))
    """
)


def _train(devices: int, groups: int) -> subprocess.Popen:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    return subprocess.Popen(
        [sys.executable, "-c", _TRAIN, str(groups)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-3000:]
    return json.loads(out.decode().split("RESULT", 1)[1])


def test_smoke_training_is_the_same_on_one_two_and_four_devices():
    runs = {n: _train(n, groups=4) for n in (1, 2, 4)}
    results = {n: _result(p) for n, p in runs.items()}
    for n, r in results.items():
        assert f"[deepjscc] mesh: {n} devices over 1 process(es)" in r["log"]
    reference = [np.asarray(x) for x in results[1]["params"]]
    # Same shapes, keys and summation order on every device count: equal to the bit on this CPU. The
    # tolerance, 1e-7 (a few float32 ulps of parameters ~0.3), only leaves room for another machine's
    # rounding; ungrouped 1- and 2-device runs differ by 1.1e-7 after 1 step and 4.7e-4 after 10.
    for n in (2, 4):
        for a, b in zip(reference, results[n]["params"]):
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-7)


def test_grad_groups_must_fit_devices_and_batch():
    assert parallel.check_grad_groups(0, 16, 4) == 0
    assert parallel.check_grad_groups(8, 16, 4) == 8
    for bad in (2, 6, 32):  # not a multiple of 4 devices, or does not divide the batch 16
        with pytest.raises(ValueError, match=r"train.grad_groups=.*e.g. 4.*or to 0"):
            parallel.check_grad_groups(bad, 16, 4)
