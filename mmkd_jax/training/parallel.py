"""Device mesh and global-batch assembly for data parallelism (``jax.jit`` + shardings).

One mesh ``('replica', 'data')`` over every device of every process. A single run has one
replica group (shape ``(1, devices)``): batches are sharded along their first axis over 'data'
and the train state is replicated. Under ``jit`` the step is written for the global batch, so
BatchNorm statistics, the Gram matrices of MMKD's feature weighter and the gradient means are
computed over the global batch, exactly as on one device. Replicas (``mmkd_jax/training/replicas.py``)
with ``config.replica_shards = G`` split the devices into G groups: the stacked state's leading
replica axis is sharded over 'replica' and each replica's batch over the 'data' devices of its
group (``vmap(..., spmd_axis_name='replica')``).
"""

from __future__ import annotations

import collections
import itertools
from typing import Any, Iterable, Iterator

import jax
from jax.experimental import multihost_utils
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

PyTree = Any


def sync_hosts(name: str) -> None:
  """Every process waits here until all have arrived (a no-op on one process): after one host
  wrote what the others are about to read."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"mmkd_jax {name}")


def data_mesh(replica_shards: int = 1) -> jax.sharding.Mesh:
  """Every device, as ``replica_shards`` groups (the 'replica' axis) of data-parallel devices."""
  devices = np.asarray(jax.devices())
  if replica_shards < 1 or devices.size % replica_shards:
    raise ValueError(f"replica_shards {replica_shards} does not divide the {devices.size} devices into equal "
                     f"groups; use a divisor of {devices.size}")
  return jax.sharding.Mesh(devices.reshape(replica_shards, -1), ("replica", "data"))


def data_devices(mesh: jax.sharding.Mesh) -> int:
  """How many devices share one replica's batch (the size of the 'data' axis)."""
  return int(mesh.shape["data"])


def check_batch_size(global_batch: int, mesh: jax.sharding.Mesh) -> None:
  devices = data_devices(mesh)
  if global_batch % devices:
    raise ValueError(f"batch_size {global_batch} does not divide evenly over {devices} devices; "
                     f"use a multiple of {devices}")


def copy_to_devices(tree: PyTree, mesh: jax.sharding.Mesh) -> PyTree:
  """A full copy of ``tree`` on every device of ``mesh`` (not to be confused with a replica: a
  seed's run in ``mmkd_jax.training.replicas``)."""
  return jax.device_put(tree, NamedSharding(mesh, P()))


def replica_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Replica-stacked state: the leading axis split over the 'replica' groups."""
  return NamedSharding(mesh, P("replica"))


def shard_replicas(tree: PyTree, mesh: jax.sharding.Mesh) -> PyTree:
  return jax.device_put(tree, replica_sharding(mesh))


def batch_sharding(mesh: jax.sharding.Mesh, batch_axis: int = 0) -> NamedSharding:
  """Batch-major arrays: axis 0 split over 'data'; replica-stacked batches (``batch_axis=1``):
  the replica axis over 'replica' and the batch axis over 'data'."""
  if batch_axis == 0:
    return NamedSharding(mesh, P("data"))
  if batch_axis == 1:
    return NamedSharding(mesh, P("replica", "data"))
  raise ValueError(f"batch_axis {batch_axis}: batches are batch-major (0) or replica-stacked (1)")


def shard_batch(batch: PyTree, mesh: jax.sharding.Mesh, batch_axis: int = 0) -> PyTree:
  """Process-local rows -> global arrays sharded along ``batch_axis`` over the mesh."""
  sharding = batch_sharding(mesh, batch_axis)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def prefetch_to_device(batches: Iterable[PyTree], mesh: jax.sharding.Mesh, size: int = 2,
                       batch_axis: int = 0) -> Iterator[PyTree]:
  """``shard_batch`` of each host batch, keeping ``size`` batches already sent to the devices:
  the copies are asynchronous, so the next batches travel while the current step runs and a
  step does not wait on the host when the host keeps ahead (experiments/input_pipeline.py)."""
  iterator, queue = iter(batches), collections.deque()

  def send(count: int) -> None:
    for batch in itertools.islice(iterator, count):
      queue.append(shard_batch(batch, mesh, batch_axis))
  send(size)
  while queue:
    yield queue.popleft()
    send(1)


def rounded_batch(batch_size: int, mesh: Any) -> int:
  """The eval batch rounded up to a multiple of the devices (padding rows are masked)."""
  devices = data_devices(mesh)
  return -(-batch_size // devices) * devices
