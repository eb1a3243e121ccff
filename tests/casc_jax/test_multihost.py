"""Two processes on 127.0.0.1 (CPU, one device each) give the results of one process.

The multi-host recipe of BUILD.md end to end through launch.py: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES
and JAX_PROCESS_ID, training the DeepJSCC smoke preset (gradients averaged across processes, orbax saving
collectively into one workdir) and evaluating it (every process evaluates the same global batches and the
per-image scores are gathered). Both are compared with one process to float tolerance.

Data: the 200 distinct embedded CIFAR-10 images. The in-memory training streams give every process its
block of the single-process global batch, so two processes train on the batches one process does.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = "--config=configs/deepjscc_mse_cr48.py:smoke"
SMALL = [
    "--config.train.deepjscc.num_steps=3",
    "--config.train.checkpoint_every=3",
    "--config.train.log_every=3",
    "--config.eval.num_images=16",
    "--config.channel.eval_snrs=(5.0,20.0)",
]
TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_FLAGS", "SLURM_"))}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, **extra)
    return env


def _launch(args, processes: int, config: str = CONFIG, small=tuple(SMALL)) -> list[str]:
    """launch.py in `processes` processes (a coordinator on a free local port when > 1)."""
    cmd = [sys.executable, os.path.join(ROOT, "launch.py"), config, *small, *args]
    if processes == 1:
        procs = [subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)]
    else:
        address = f"127.0.0.1:{_free_port()}"
        procs = [
            subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env(
                JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(i)))
            for i in range(processes)
        ]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=TIMEOUT_S)[0].decode(errors="replace"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outputs):
        if p.returncode and "collectives" in out.lower() and "not" in out.lower() and processes > 1:
            pytest.skip(f"multi-process CPU collectives are unavailable in this JAX: {out[-500:]}")
        assert p.returncode == 0, out[-4000:]
    if processes > 1:
        for i, out in enumerate(outputs):
            assert f"[launch] process {i} of {processes}" in out, out[-2000:]
    return outputs


def _metrics(workdir) -> list[dict]:
    with open(os.path.join(workdir, "eval", "metrics.json")) as f:
        return json.load(f)["records"]


def _assert_same(a, b) -> None:
    assert [(r["snr_db"], r["num_images"]) for r in a] == [(r["snr_db"], r["num_images"]) for r in b]
    for ra, rb in zip(a, b):
        for key in ("psnr", "lpips"):
            if ra[key] is None or rb[key] is None:
                assert ra[key] is rb[key] is None
            else:
                np.testing.assert_allclose(ra[key], rb[key], rtol=1e-4, atol=1e-5, err_msg=key)


def test_two_processes_train_and_evaluate_as_one(tmp_path):
    data = "--config.data.source=embedded"
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    _launch([data, f"--workdir={one}"], processes=1)
    _launch([data, f"--workdir={two}"], processes=2)
    _assert_same(_metrics(one), _metrics(two))
    assert not os.path.exists(os.path.join(two, ".lock"))

    # Evaluation alone of the model the two processes trained: 2 processes == 1 process.
    _launch([data, f"--workdir={two}", "--mode=eval"], processes=2)
    by_two = _metrics(two)
    _launch([data, f"--workdir={two}", "--mode=eval"], processes=1)
    _assert_same(by_two, _metrics(two))


def test_distributed_args_come_from_the_documented_variables(monkeypatch):
    from casc_jax.train import parallel

    for name in (*parallel._EXPLICIT_ENV, *parallel._CLUSTER_ENV, *parallel._PROCESS_ID_ENV):
        monkeypatch.delenv(name, raising=False)
    assert parallel.distributed_args() is None and parallel.env_process_index() is None
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "host0:1234")
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES and JAX_PROCESS_ID are not set"):
        parallel.distributed_args()
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    assert parallel.distributed_args() == {"coordinator_address": "host0:1234", "num_processes": 4, "process_id": 3}
    assert parallel.env_process_index() == 3
    monkeypatch.setenv("JAX_PROCESS_ID", "4")
    with pytest.raises(ValueError, match="JAX_PROCESS_ID < JAX_NUM_PROCESSES"):
        parallel.distributed_args()
    for name in parallel._EXPLICIT_ENV:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    assert parallel.distributed_args() == {}  # JAX detects the cluster


MT_SEG = "--config=configs/multitask_seg.py:smoke"
MT_SMALL = [
    "--config.train.segmentation.num_steps=3",
    "--config.train.checkpoint_every=3",
    "--config.train.log_every=3",
    "--config.eval.num_images=12",  # two batches of 8, the second cut by num_images
    "--config.channel.eval_snrs=(0.0,20.0)",
]


def _segmentation_records(workdir) -> list[dict]:
    with open(os.path.join(workdir, "eval", "segmentation", "metrics.json")) as f:
        return json.load(f)


def test_two_processes_evaluate_the_multitask_segmentation_as_one(tmp_path):
    """The multi-task sweep follows the same rule (casc_jax.evaluate.snr_sweep): the confusion matrix
    summed over 2 processes gives the records of 1."""
    workdir = str(tmp_path / "seg")
    _launch([f"--workdir={workdir}"], 1, MT_SEG, MT_SMALL)
    _launch([f"--workdir={workdir}", "--mode=eval"], 2, MT_SEG, MT_SMALL)
    two = _segmentation_records(workdir)
    _launch([f"--workdir={workdir}", "--mode=eval"], 1, MT_SEG, MT_SMALL)
    one = _segmentation_records(workdir)
    assert [(r["snr_db"], r["num_images"]) for r in two] == [(r["snr_db"], r["num_images"]) for r in one]
    assert all(r["num_images"] == 12 for r in one)
    for a, b in zip(one, two, strict=True):
        for key in ("miou", "pixel_accuracy", "mean_class_accuracy"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-6, err_msg=key)
