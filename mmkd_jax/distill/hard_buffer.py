"""MMKD's hard-example buffer as a fixed-size pytree (jit-friendly, checkpointable).

Semantics of the reference: until full, every training batch is appended whole; once full,
the examples the student misclassified (at the pre-step parameters) overwrite as many
distinct, uniformly random slots. Meta batches are drawn uniformly without replacement from
the filled part. Capacity must be a multiple of the batch size (the reference's buffer
otherwise never becomes full).
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp

from mmkd_jax.errors import ConfigError

PyTree = Any


# A bi-level method's own config fields (``config.<method>.hard_buffer`` / ``.buffer_size``):
# meta batches from a buffer of hard examples, or (off) the current batch.
SECTION = {"hard_buffer": True, "buffer_size": 256}


def check_section(config: Any, section: str) -> None:
  """The hard buffer of ``config.<section>`` fills up exactly (a multiple of the batch size)."""
  if config[section].hard_buffer:
    check_capacity(config[section].buffer_size, config.batch_size, f"{section}.buffer_size")


def check_capacity(capacity: int, batch_size: int, field: str) -> None:
  """The buffer fills up exactly only when its capacity is a multiple of the batch size (the
  reference's buffer otherwise never becomes full)."""
  if capacity <= 0 or capacity % batch_size:
    raise ConfigError(f"config.{field}: {capacity} must be a positive multiple of batch_size {batch_size} "
                      "(the buffer must fill up exactly; the reference's buffer never fills otherwise)")


@flax.struct.dataclass
class HardBuffer:
  data: PyTree        # every leaf has a leading axis of size `capacity`
  count: jax.Array    # int32: how many slots are filled

  @property
  def capacity(self) -> int:
    return jax.tree.leaves(self.data)[0].shape[0]


def init(example_batch: PyTree, capacity: int) -> HardBuffer:
  batch = jax.tree.leaves(example_batch)[0].shape[0]
  if capacity <= 0 or capacity % batch:
    raise ValueError(f"hard buffer capacity {capacity} must be a positive multiple of batch_size {batch} "
                     "(the buffer must fill up exactly)")
  data = jax.tree.map(lambda x: jnp.zeros((capacity,) + x.shape[1:], x.dtype), example_batch)
  return HardBuffer(data, jnp.zeros((), jnp.int32))


def update(buffer: HardBuffer, batch: PyTree, misclassified: jax.Array, rng: jax.Array) -> HardBuffer:
  capacity = buffer.capacity
  size = misclassified.shape[0]

  def append(buf):
    data = jax.tree.map(lambda d, x: jax.lax.dynamic_update_slice_in_dim(d, x.astype(d.dtype), buf.count, 0),
                        buf.data, batch)
    return HardBuffer(data, jnp.minimum(buf.count + size, capacity))

  def replace(buf):
    slots = jax.random.permutation(rng, capacity)[:size]
    rank = jnp.cumsum(misclassified) - 1
    # Misclassified example j goes to slot slots[rank[j]]; others are dropped (out of range).
    target = jnp.where(misclassified, slots[jnp.clip(rank, 0, size - 1)], capacity)
    data = jax.tree.map(lambda d, x: d.at[target].set(x.astype(d.dtype), mode="drop"), buf.data, batch)
    return HardBuffer(data, buf.count)

  return jax.lax.cond(buffer.count < capacity, append, replace, buffer)


def sample(buffer: HardBuffer, rng: jax.Array, batch_size: int) -> PyTree:
  """``batch_size`` distinct filled slots, uniformly at random."""
  filled = jnp.arange(buffer.capacity) < buffer.count
  # Random keys, unfilled slots last: the first batch_size positions are a uniform sample.
  keys = jnp.where(filled, jax.random.uniform(rng, (buffer.capacity,)), 2.0)
  chosen = jnp.argsort(keys)[:batch_size]
  return jax.tree.map(lambda d: d[chosen], buffer.data)
