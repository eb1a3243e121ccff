"""Data parallelism, decided in one place: a 1-D device mesh with a `data` axis.

Parameters and optimiser state are replicated (P()); batches are split along their first axis
(P('data')). Model code never mentions devices. Multi-host runs call `maybe_initialize_distributed`
first; each host then feeds its local slice of the global batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
_DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES")


def maybe_initialize_distributed() -> bool:
    """Call jax.distributed.initialize() when the environment describes a multi-host job."""
    if not any(os.environ.get(name) for name in _DISTRIBUTED_ENV):
        return False
    try:
        jax.distributed.initialize()
    except RuntimeError as err:  # already initialised, or a single-host SLURM allocation
        if "already" not in str(err).lower() and "only be called once" not in str(err):
            raise
    return True


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
    """A mesh over all (or the first `num_devices`) devices with one `data` axis."""
    n = num_devices or jax.device_count()
    return jax.make_mesh((n,), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch: int, mesh: jax.sharding.Mesh) -> int:
    """The per-process batch; the global batch must split evenly over devices and hosts."""
    devices = mesh.devices.size
    if global_batch % devices:
        raise ValueError(f"batch size {global_batch} is not divisible by the {devices} devices of the mesh")
    return global_batch // jax.process_count()


def shard_batch(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """Host-local numpy batch -> global arrays split along `data` (works on one or many hosts)."""
    sharding = batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def replicate(tree, mesh: jax.sharding.Mesh):
    """Place a pytree (params, optimiser state) on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))


def jit_data_parallel(fn: Callable, mesh: jax.sharding.Mesh, batch_argnums=(1,), donate_argnums=(0,)):
    """jit `fn(state, batch, ...)` with replicated state/outputs and batch arguments split on `data`."""

    def shardings(n_args):
        return tuple(batch_sharded(mesh) if i in batch_argnums else replicated(mesh) for i in range(n_args))

    cache: dict[int, Callable] = {}

    def wrapped(*args):
        if len(args) not in cache:
            cache[len(args)] = jax.jit(
                fn,
                in_shardings=shardings(len(args)),
                out_shardings=replicated(mesh),
                donate_argnums=donate_argnums,
            )
        return cache[len(args)](*args)

    return wrapped
