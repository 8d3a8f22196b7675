"""Data parallelism with JAX sharding: each batch split over `train.devices` devices, parameters replicated.

One `jax.sharding.Mesh` with a single axis "batch"; inputs are placed with
`NamedSharding(mesh, P("batch"))` and the model and optimizer state with `NamedSharding(mesh, P())`.
The jitted training step is unchanged: XLA's SPMD partitioner splits the per-example work and
inserts the all-reduce of the gradient (the mean over the batch), so the update is the same as on
one device up to float summation order.

Several processes (`ode_nets.training.distributed`): `train.devices` counts the devices of each
process; the mesh spans that many devices of every process, in process order, so process p holds rows
`process_rows(batch_size)` of every global batch and feeds only those
(`jax.make_array_from_process_local_data`). With one process every function below does what it did before.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ode_nets.errors import ConfigError
from ode_nets.strategies.layer_parallel import layer_mesh

BATCH_AXIS = "batch"


def check_devices(devices: int, batch_size: int) -> None:
    """`ConfigError` unless each process has `devices` devices and `batch_size` splits evenly over all of them."""
    available = jax.local_device_count()
    if devices > available:
        raise ConfigError(f"train.devices = {devices}, but only {available} JAX device(s) are available "
                          f"({jax.devices()[0].platform}); on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N "
                          f"makes N host devices")
    if batch_size % devices:
        raise ConfigError(f"train.batch_size = {batch_size} is not divisible by train.devices = {devices}")
    if batch_size % (devices * jax.process_count()):
        raise ConfigError(f"train.batch_size = {batch_size} is not divisible by {jax.process_count()} processes x "
                          f"train.devices = {devices}")


def mesh_devices(devices: int) -> list:
    """The first `devices` devices of every process, in process order (one process: `jax.devices()[:devices]`)."""
    by_process: dict[int, list] = {}
    for device in jax.devices():
        by_process.setdefault(device.process_index, []).append(device)
    return [d for p in sorted(by_process) for d in by_process[p][:devices]]


def batch_mesh(devices: int, layer_devices: int = 1) -> Mesh:
    """A one-axis mesh ("batch") over the first `devices` devices of every process; with `layer_devices` > 1 the
    2-D mesh ("batch", "layers") of layer-parallel training (`ode_nets.strategies.layer_parallel.layer_mesh`, one
    process), on which a batch sharded over "batch" is replicated along "layers"."""
    if layer_devices > 1:
        return layer_mesh(devices, layer_devices)
    return Mesh(np.asarray(mesh_devices(devices)), (BATCH_AXIS,))


def process_rows(batch_size: int) -> slice:
    """The rows of a global batch that this process feeds (all of them in a single-process run)."""
    share = batch_size // jax.process_count()
    return slice(jax.process_index() * share, (jax.process_index() + 1) * share)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every array leaf of `tree` copied to all devices of `mesh` (parameters, optimizer state)."""
    sharding = NamedSharding(mesh, PartitionSpec())
    return jax.tree_util.tree_map(lambda x: jax.device_put(x, sharding) if isinstance(x, (jax.Array, np.ndarray))
                                  else x, tree)


def shard_batch(arrays: tuple, mesh: Mesh) -> tuple:
    """Split each array's leading (batch) axis over the devices of `mesh`; with several processes each passes its
    `process_rows` and gets the global batch."""
    sharding = NamedSharding(mesh, PartitionSpec(BATCH_AXIS))
    if jax.process_count() > 1:
        return tuple(jax.make_array_from_process_local_data(sharding, np.asarray(a)) for a in arrays)
    return tuple(jax.device_put(a, sharding) for a in arrays)
