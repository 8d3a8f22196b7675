"""Data parallelism with JAX sharding: each batch split over `train.devices` devices, parameters replicated.

One `jax.sharding.Mesh` with a single axis "batch"; inputs are placed with
`NamedSharding(mesh, P("batch"))` and the model and optimizer state with `NamedSharding(mesh, P())`.
The jitted training step is unchanged: XLA's SPMD partitioner splits the per-example work and
inserts the all-reduce of the gradient (the mean over the batch), so the update is the same as on
one device up to float summation order.

Multi-host: call `jax.distributed.initialize()` on every host first; `jax.devices()` then lists
the devices of all hosts, and the same mesh spans them (each host feeds its slice of the batch,
e.g. with `jax.make_array_from_process_local_data`).
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
    """`ConfigError` unless `devices` devices exist and `batch_size` splits evenly over them."""
    available = jax.device_count()
    if devices > available:
        raise ConfigError(f"train.devices = {devices}, but only {available} JAX device(s) are available "
                          f"({jax.devices()[0].platform}); on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N "
                          f"makes N host devices")
    if batch_size % devices:
        raise ConfigError(f"train.batch_size = {batch_size} is not divisible by train.devices = {devices}")


def batch_mesh(devices: int, layer_devices: int = 1) -> Mesh:
    """A one-axis mesh ("batch") over the first `devices` devices; with `layer_devices` > 1 the 2-D mesh
    ("batch", "layers") of layer-parallel training (`ode_nets.strategies.layer_parallel.layer_mesh`), on which a
    batch sharded over "batch" is replicated along "layers"."""
    if layer_devices > 1:
        return layer_mesh(devices, layer_devices)
    return Mesh(np.asarray(jax.devices()[:devices]), (BATCH_AXIS,))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every array leaf of `tree` copied to all devices of `mesh` (parameters, optimizer state)."""
    sharding = NamedSharding(mesh, PartitionSpec())
    return jax.tree_util.tree_map(lambda x: jax.device_put(x, sharding) if isinstance(x, (jax.Array, np.ndarray))
                                  else x, tree)


def shard_batch(arrays: tuple, mesh: Mesh) -> tuple:
    """Split each array's leading (batch) axis over the devices of `mesh`."""
    sharding = NamedSharding(mesh, PartitionSpec(BATCH_AXIS))
    return tuple(jax.device_put(a, sharding) for a in arrays)
