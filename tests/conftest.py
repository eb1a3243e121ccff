"""Test-wide settings and fixtures: CPU only, fast compiles, and a compilation counter.

The JAX flags are set here, once for the whole session, and never by a test module: a flag changed at
import would leak into whatever module the same worker imports next.
"""

import logging
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

from casc_jax.cli import PROGRESS_LOGGERS  # noqa: E402

# Shape and wiring tests of small models: XLA's optimisation passes only cost compile time here.
# Subprocesses (launcher and multi-device tests) start from their own environment and keep the defaults.
jax.config.update("jax_disable_most_optimizations", True)

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
    """Number of XLA backend compilations since the fixture started (or since `reset`)."""

    def __init__(self):
        self.count = 0

    def __call__(self, event, duration_secs, **kwargs):
        del duration_secs, kwargs
        if event == _COMPILE_EVENT:
            self.count += 1

    def reset(self) -> None:
        self.count = 0


@pytest.fixture
def compile_count():
    """A `CompileCounter` registered with `jax.monitoring` for the test's duration."""
    counter = CompileCounter()
    jax.monitoring.register_event_duration_secs_listener(counter)
    try:
        yield counter
    finally:
        jax.monitoring.unregister_event_duration_listener(counter)


class ProgressLines:
    """The progress lines (INFO and above) that casc_jax and multitask_jax logged during the test."""

    def __init__(self, caplog):
        self._caplog = caplog

    @property
    def lines(self) -> list[str]:
        return [r.getMessage() for r in self._caplog.records if r.name.split(".")[0] in PROGRESS_LOGGERS]

    def clear(self) -> None:
        self._caplog.clear()


@pytest.fixture
def progress(caplog, monkeypatch):
    """`ProgressLines` of the test; works also after an in-process launch made the loggers print directly."""
    for name in PROGRESS_LOGGERS:
        caplog.set_level(logging.INFO, logger=name)
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)
    return ProgressLines(caplog)


def _scan_lengths(jaxpr):
    """Lengths of every scan in a (closed) jaxpr, sub-jaxprs included."""
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            out.append(eqn.params["length"])
        for v in eqn.params.values():
            for sub in v if isinstance(v, (list, tuple)) else [v]:
                if hasattr(sub, "eqns"):  # Jaxpr
                    out += _scan_lengths(sub)
                elif hasattr(getattr(sub, "jaxpr", None), "eqns"):  # ClosedJaxpr
                    out += _scan_lengths(sub.jaxpr)
    return out


@pytest.fixture
def scan_lengths():
    """jaxpr -> the lengths of its scans: a sampler compiled as one chain shows exactly one."""
    return _scan_lengths
