"""Data parallelism, decided in one place: a 1-D device mesh with a `data` axis.

Parameters and optimiser state are replicated (P()); batches are split along their first axis
(P('data')). Model code never mentions devices. Multi-host runs call `maybe_initialize_distributed`
first; each host then feeds its local slice of the global batch when training (`shard_batch`), while
evaluation, sampling and transmit give every process the whole global batch (`global_batch`) and
gather results with `to_host`, so they match a single-process run.
"""

from __future__ import annotations

import functools
import operator
import os
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
# Variables that describe a multi-host job: the explicit ones BUILD.md documents, then those of the
# clusters JAX detects itself (SLURM, TPU pods, Open MPI, Kubernetes JobSet / GKE).
_EXPLICIT_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
_CLUSTER_ENV = ("COORDINATOR_ADDRESS", "SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "OMPI_MCA_orte_hnp_uri",
                "JOBSET_NAME")
_PROCESS_ID_ENV = ("JAX_PROCESS_ID", "SLURM_PROCID", "TPU_WORKER_ID", "OMPI_COMM_WORLD_RANK")


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"the environment variable {name}={value!r} is not an integer") from None


def env_process_index() -> int | None:
    """This process's index in a multi-host job as the environment gives it (None when it does not).

    Read before JAX starts, so that only process 0 takes the workdir lock.
    """
    for name in _PROCESS_ID_ENV:
        index = _env_int(name)
        if index is not None:
            return index
    return None


def distributed_args() -> dict | None:
    """jax.distributed.initialize's arguments from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
    JAX_PROCESS_ID; {} to let JAX detect the cluster (SLURM, TPU, ...); None for a single-process run.

    JAX itself reads only the coordinator address from the environment, so the count and index are
    passed explicitly. ValueError when the explicit variables are incomplete or inconsistent.
    """
    given = {name: os.environ.get(name, "").strip() for name in _EXPLICIT_ENV}
    if any(given.values()):
        missing = [name for name, value in given.items() if not value]
        if missing:
            raise ValueError(
                f"a multi-host run needs all of {', '.join(_EXPLICIT_ENV)}; {' and '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not set "
                "(e.g. JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0)"
            )
        count, index = _env_int("JAX_NUM_PROCESSES"), _env_int("JAX_PROCESS_ID")
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"need 0 <= JAX_PROCESS_ID < JAX_NUM_PROCESSES, got {index} and {count}")
        if count == 1:
            return None
        return {"coordinator_address": given["JAX_COORDINATOR_ADDRESS"], "num_processes": count,
                "process_id": index}
    if any(os.environ.get(name) for name in _CLUSTER_ENV):
        return {}
    return None


def maybe_initialize_distributed() -> bool:
    """Call jax.distributed.initialize() when the environment describes a multi-host job.

    With the explicit variables it passes them on; otherwise JAX detects the cluster. A SLURM allocation
    of one task is a single-process run, not an error.
    """
    args = distributed_args()
    if args is None:
        return False
    try:
        jax.distributed.initialize(**args)
    except RuntimeError as err:  # already initialised
        if "already" not in str(err).lower() and "only be called once" not in str(err):
            raise
    except ValueError:  # auto-detection found no cluster (e.g. a SLURM job step of one task)
        if args:
            raise
        return False
    return jax.process_count() > 1


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


def global_batch(x, mesh: jax.sharding.Mesh) -> jax.Array:
    """An array every process holds in full (the same global batch) -> a global array split on `data`.

    Unlike `shard_batch`, the row order is that of `x` whatever the number of processes, so evaluation,
    sampling and transmit give the same results on 1 or many hosts. jax.Arrays pass through.
    """
    sharding = batch_sharded(mesh)
    if isinstance(x, jax.Array):
        return x if x.sharding == sharding else jax.device_put(x, sharding)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def pad_to_devices(x: np.ndarray, mesh: jax.sharding.Mesh) -> np.ndarray:
    """(N, ...) -> (N + pad, ...) with zero rows so that the batch splits evenly over the mesh."""
    x = np.asarray(x)
    pad = -len(x) % mesh.devices.size
    return np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)]) if pad else x


def to_host(x) -> np.ndarray:
    """A (global) array -> numpy on every process: gathered across processes when it is split over them."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
    if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def is_primary() -> bool:
    """True on the process that writes shared files (process 0)."""
    return jax.process_index() == 0


def replicate(tree, mesh: jax.sharding.Mesh):
    """Place a pytree (params, optimiser state) on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))


def init_replicated(initial_fn: Callable, key: jax.Array, mesh: jax.sharding.Mesh):
    """`initial_fn(key)` (a train state, parameters) created by one jitted call, directly replicated over
    `mesh`: eager init would dispatch thousands of small ops and then copy the tree to every device."""
    return jax.jit(initial_fn, out_shardings=replicated(mesh))(key)


def abstract_replicated(initial_fn: Callable, mesh: jax.sharding.Mesh):
    """The restore target of `initial_fn(key)`: its shapes, dtypes and replicated shardings, nothing allocated."""
    abstract = jax.eval_shape(initial_fn, jax.random.key(0))
    sharding = replicated(mesh)
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), abstract)


def jit_data_parallel(fn: Callable, mesh: jax.sharding.Mesh, batch_argnums=(1,), donate_argnums=(0,)):
    """jit `fn(state, batch, ...)` with replicated state/outputs and batch arguments split on `data`.

    It runs under `jax.set_mesh(mesh)`, so `fn` may use `value_and_grad(..., groups)` without naming the mesh.
    """

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
        with jax.set_mesh(mesh):  # the mesh `value_and_grad`'s grouped path runs its shard_map on
            return cache[len(args)](*args)

    return wrapped


def jit_step_with(step: Callable, const, mesh: jax.sharding.Mesh) -> Callable:
    """`step(state, batch, const)` jitted data-parallel with `const` bound: (state, batch) -> (state, metrics).

    `const` (frozen parameters, LPIPS weights, a teacher) stays an argument of the compiled step, so it is
    never baked into the executable as a constant.
    """
    jitted = jit_data_parallel(step, mesh)
    return lambda state, batch: jitted(state, batch, const)


# -- a gradient whose bits do not depend on the device count --------------------------------------
def check_grad_groups(groups: int, global_batch: int, num_devices: int) -> int:
    """`train.grad_groups` checked against the batch and the mesh (0 = off)."""
    groups = int(groups or 0)
    if groups and (groups < 0 or groups % num_devices or global_batch % groups):
        raise ValueError(
            f"train.grad_groups={groups} must be a multiple of the {num_devices} devices that divides the batch "
            f"{global_batch}: set it to such a number (e.g. {num_devices}), or to 0 to turn grouping off"
        )
    return groups


def value_and_grad(loss_fn: Callable, groups: int = 0) -> Callable:
    """`(params, batch, key) -> (loss, grads)` of `loss_fn(params, batch, key)`, a scalar mean over the batch.

    groups 0: `jax.value_and_grad(loss_fn)` on the whole batch; XLA's all-reduce then sums the devices'
    partial gradients in an order that depends on the device count, so the last bits do too.
    groups G > 0: every `batch` leaf (B, ...) is cut into G consecutive groups of B / G examples. Each
    device runs the groups it holds one after another (`lax.scan`), group g with `fold_in(key, g)`; the
    G (loss, grads) are gathered and averaged left to right. The shapes, keys and summation order are
    the same on 1 to G devices, and so are the results. G must be a multiple of the device count (of
    the mesh set with `jax.set_mesh`, see `jit_data_parallel`) and divide B.
    """
    if not groups:
        return jax.value_and_grad(loss_fn)

    def per_group(params, batch, key, first, size):
        """Stacked (loss, grads) of the consecutive groups of `size` examples in `batch`, numbered from `first`."""
        split = jax.tree.map(lambda a: a.reshape((a.shape[0] // size, size) + a.shape[1:]), batch)

        def body(_, xs):
            i, group = xs
            return None, jax.value_and_grad(loss_fn)(params, group, jax.random.fold_in(key, first + i))

        count = jax.tree.leaves(split)[0].shape[0]
        return jax.lax.scan(body, None, (jnp.arange(count), split))[1]

    def ordered_mean(stacked):
        return jax.tree.map(lambda s: functools.reduce(operator.add, [s[g] for g in range(groups)]) / groups, stacked)

    def grouped(params, batch, key):
        batch_size = jax.tree.leaves(batch)[0].shape[0]
        mesh = jax.sharding.get_abstract_mesh()
        devices = 1 if mesh.empty else mesh.shape[DATA_AXIS]
        check_grad_groups(groups, batch_size, devices)
        size = batch_size // groups
        if devices == 1:
            return ordered_mean(per_group(params, batch, key, 0, size))

        def shard(params, batch, key):
            stacked = per_group(params, batch, key, jax.lax.axis_index(DATA_AXIS) * (groups // devices), size)
            return ordered_mean(jax.lax.all_gather(stacked, DATA_AXIS, tiled=True))

        specs = (P(), jax.tree.map(lambda _: P(DATA_AXIS), batch), P())
        # check_vma=False: all_gather leaves every device the same G results, so the mean is replicated
        return jax.shard_map(shard, in_specs=specs, out_specs=P(), check_vma=False)(params, batch, key)

    return grouped
