"""Device mesh and global-batch assembly for data parallelism (``jax.jit`` + shardings).

One 1-D mesh ``('data',)`` over every device of every process; batches are sharded along
their first axis and the train state is replicated. Under ``jit`` the step is written for the
global batch, so BatchNorm statistics, the Gram matrices of MMKD's feature weighter and the
gradient means are computed over the global batch, exactly as on one device.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

PyTree = Any


def data_mesh() -> jax.sharding.Mesh:
  return jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))


def check_batch_size(global_batch: int, mesh: jax.sharding.Mesh) -> None:
  devices = mesh.devices.size
  if global_batch % devices:
    raise ValueError(f"batch_size {global_batch} does not divide evenly over {devices} devices; "
                     f"use a multiple of {devices}")


def replicate(tree: PyTree, mesh: jax.sharding.Mesh) -> PyTree:
  return jax.device_put(tree, NamedSharding(mesh, P()))


def batch_sharding(mesh: jax.sharding.Mesh, batch_axis: int = 0) -> NamedSharding:
  """Batch-major arrays: axis ``batch_axis`` (0; 1 for replica-stacked batches) split over the
  'data' axis."""
  return NamedSharding(mesh, P(*([None] * batch_axis), "data"))


def shard_batch(batch: PyTree, mesh: jax.sharding.Mesh, batch_axis: int = 0) -> PyTree:
  """Process-local rows -> global arrays sharded along ``batch_axis`` over the mesh."""
  sharding = batch_sharding(mesh, batch_axis)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)
