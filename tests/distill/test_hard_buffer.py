"""The hard-example buffer: fill, replacement of random slots by misclassified examples, sampling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmkd_jax.distill import hard_buffer


def _batch(start, size=4):
  ids = jnp.arange(start, start + size)
  return {"image": jnp.broadcast_to(ids[:, None, None, None], (size, 2, 2, 1)).astype(jnp.float32),
          "label": ids.astype(jnp.int32)}


def test_fills_with_whole_batches_then_replaces_only_misclassified():
  buf = hard_buffer.init(_batch(0), capacity=8)
  buf = hard_buffer.update(buf, _batch(0), jnp.zeros(4, bool), jax.random.key(0))
  assert int(buf.count) == 4  # appended even though nothing was misclassified
  buf = hard_buffer.update(buf, _batch(10), jnp.zeros(4, bool), jax.random.key(1))
  assert int(buf.count) == 8
  np.testing.assert_array_equal(buf.data["label"], [0, 1, 2, 3, 10, 11, 12, 13])
  same = hard_buffer.update(buf, _batch(20), jnp.zeros(4, bool), jax.random.key(2))
  np.testing.assert_array_equal(same.data["label"], buf.data["label"])
  wrong = jnp.array([True, False, True, False])
  new = hard_buffer.update(buf, _batch(20), wrong, jax.random.key(3))
  labels = np.asarray(new.data["label"])
  assert sorted(set(labels) - set(np.asarray(buf.data["label"]))) == [20, 22]
  assert int((labels != np.asarray(buf.data["label"])).sum()) == 2  # two distinct slots
  # Images move with their labels.
  np.testing.assert_array_equal(np.asarray(new.data["image"])[:, 0, 0, 0], labels)


def test_sample_is_without_replacement_from_filled_slots():
  buf = hard_buffer.init(_batch(0), capacity=8)
  buf = hard_buffer.update(buf, _batch(0), jnp.zeros(4, bool), jax.random.key(0))
  sample = hard_buffer.sample(buf, jax.random.key(5), 4)
  assert sorted(np.asarray(sample["label"]).tolist()) == [0, 1, 2, 3]  # only the filled half
  buf = hard_buffer.update(buf, _batch(4), jnp.zeros(4, bool), jax.random.key(1))
  counts = np.zeros(8)
  for k in range(400):
    drawn = np.asarray(hard_buffer.sample(buf, jax.random.key(k), 4)["label"])
    assert len(set(drawn.tolist())) == 4
    counts[drawn] += 1
  np.testing.assert_allclose(counts / 400, 0.5, atol=0.1)  # uniform: each slot in half the draws


def test_capacity_must_be_a_multiple_of_the_batch():
  with pytest.raises(ValueError, match="multiple of batch_size 4"):
    hard_buffer.init(_batch(0), capacity=6)


def test_jit_compatible():
  buf = hard_buffer.init(_batch(0), capacity=8)
  update = jax.jit(hard_buffer.update)
  for i in range(3):
    buf = update(buf, _batch(4 * i), jnp.array([True, False, False, True]), jax.random.key(i))
  assert int(buf.count) == 8
