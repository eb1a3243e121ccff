"""Timing helpers every benchmark script shares: the device, the machine's load, a compiled function's median
time and XLA FLOP count, the f32 matmul peak measured in the same run, and the script report on stdout."""

from __future__ import annotations

import json
import os
import pathlib
import platform
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp


def device_description() -> str:
    """The devices, the host CPU and core count, and the jax version, in one line."""
    d = jax.devices()[0]
    kind = getattr(d, "device_kind", d.platform)
    cpu = platform.processor() or platform.machine()
    return f"{jax.device_count()} x {kind} ({d.platform}; host {cpu}, {os.cpu_count()} cores; jax {jax.__version__})"


def machine_load() -> dict:
    """The 1/5/15-minute load averages and core count. `quiet` is False when, before the benchmark's own
    work, other processes keep more than half the cores busy: such timings are upper bounds."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    cores = os.cpu_count() or 1
    return {"load_average": [round(x, 2) for x in load], "cores": cores, "quiet": bool(load[0] <= 0.5 * cores)}


def timed(fn: Callable, *args, repeats: int = 3) -> tuple[float, float, list[float]]:
    """(compile+first-run seconds, median seconds, all run times) of a jitted fn, blocking on results."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        runs.append(time.perf_counter() - start)
    return first, statistics.median(runs), runs


def flops_of(fn: Callable, *args) -> float:
    """FLOPs of one call of jitted `fn` from XLA's cost analysis of the compiled program."""
    analysis = fn.lower(*args).compile().cost_analysis()
    if isinstance(analysis, list | tuple):
        analysis = analysis[0]
    return float(analysis.get("flops", 0.0)) if analysis else 0.0


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """Measured f32 GFLOP/s of an n x n matmul on the default device."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    _, median, _ = timed(f, a, a, repeats=repeats)
    return 2 * n**3 / median / 1e9


def print_and_save(report: dict, table: list[str], out: str = "") -> dict:
    """A script benchmark's device, load averages (report['load_before'/'load_after']) and table lines on
    stdout; the report as JSON at `out` when given."""
    before, after = report["load_before"], report["load_after"]
    print(f"device: {report['device']}")
    print(f"load average before {before['load_average']}, after {after['load_average']} ({before['cores']} cores)")
    print("\n".join(table))
    if out:
        pathlib.Path(out).write_text(json.dumps(report, indent=2))
    return report
