"""The teacher-output cache: it reproduces the live teachers, refuses what it was not built for,
and survives interruption (mmkd_jax/teachers/cache.py)."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from mmkd_jax import config as config_lib
from mmkd_jax import teachers as teachers_lib
from mmkd_jax.data import sources
from mmkd_jax.models import get_model
from mmkd_jax.teachers import cache as teacher_cache


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def _digits_spec(data_dir):
  c = config_lib.base_config()
  c.data_dir = data_dir
  return sources.dataset_spec(c)


def _random_teachers(tmp_path, n=2):
  loaded = []
  for i in range(n):
    model = get_model("resnet8", 10)
    variables = model.init(jax.random.key(i), jnp.zeros((1, 32, 32, 3)))
    path = str(tmp_path / f"t{i}")
    teachers_lib.save_teacher(path, "resnet8", 10, variables, {"dataset": "digits"})
    loaded.append(teachers_lib.load_teacher(f"t{i}", "resnet8", 10, path, (32, 32, 3)))
  return loaded


def _spec(loaded, n, dtype="bfloat16", replays=2, seed=0):
  return teacher_cache.CacheSpec(tuple(t.name for t in loaded), tuple(t.fingerprint for t in loaded),
                                 "digits", "train", n, seed, replays, "feat[-2]", 10,
                                 tuple(tuple(s) for s in teachers_lib.feature_shapes(loaded, (32, 32, 3))), dtype)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cache_reproduces_live_teacher_outputs(tmp_path, data_dir, dtype):
  ds = _digits_spec(data_dir)
  source = sources.data_source("digits", "train", data_dir)
  loaded = _random_teachers(tmp_path)
  n = 40
  spec = _spec(loaded, n, dtype)
  variables = tuple(t.variables for t in loaded)
  forward = jax.jit(lambda images, index, replay: teachers_lib.augmented_teacher_outputs(
      loaded, variables, images, index, replay, 0, ds))

  def producer(indices, replay):
    images = sources.read_records(source, indices, ds)["image"]
    return jax.device_get(forward(images, indices, replay))

  teacher_cache.write_cache(str(tmp_path / "cache"), spec, producer, batch_size=16)
  cache = teacher_cache.TeacherCache(str(tmp_path / "cache"), spec)
  indices = np.array([3, 17, 39])
  for epoch in (0, 1, 2):  # replay = epoch % 2
    cached = cache.lookup(indices, epoch)
    images = sources.read_records(source, indices, ds)["image"]
    live_logits, live_feats = jax.device_get(forward(images, indices, epoch % 2))
    rtol = 2 ** -8 if dtype == "bfloat16" else 2 ** -11  # the storage dtype's rounding
    np.testing.assert_allclose(cached["teacher_logits"], live_logits, rtol=rtol, atol=1e-6)
    np.testing.assert_allclose(cached["teacher_feat"][1], live_feats[1], rtol=rtol, atol=1e-6)
    assert (cached["replay"] == epoch % 2).all()
  # Different replays are different augmentations, hence different outputs.
  assert not np.allclose(cache.lookup(indices, 0)["teacher_logits"], cache.lookup(indices, 1)["teacher_logits"])


def _fake_producer(t, c):
  def producer(indices, replay):
    b = len(indices)
    return (np.full((b, t, c), replay, np.float32) + indices[:, None, None],
            tuple(np.ones((b, 8, 8, 64), np.float32) for _ in range(t)))
  return producer


@pytest.mark.claim(16)
def test_mismatched_cache_is_refused_naming_the_field(tmp_path):
  loaded = _random_teachers(tmp_path)
  spec = _spec(loaded, 10)
  teacher_cache.write_cache(str(tmp_path / "c"), spec, _fake_producer(2, 10))
  other = _spec(loaded, 10, seed=1)
  with pytest.raises(teacher_cache.CacheMismatchError, match="augmentation_seed: cache has 0, this run needs 1"):
    teacher_cache.TeacherCache(str(tmp_path / "c"), other)
  renamed = teacher_cache.CacheSpec(**{**spec.__dict__, "teacher_names": ("t0", "x")})
  with pytest.raises(teacher_cache.CacheMismatchError, match="teacher_names"):
    teacher_cache.TeacherCache(str(tmp_path / "c"), renamed)
  with pytest.raises(FileExistsError):
    teacher_cache.write_cache(str(tmp_path / "c"), spec, _fake_producer(2, 10))


@pytest.mark.claim(17)
def test_truncated_cache_is_refused(tmp_path):
  loaded = _random_teachers(tmp_path)
  spec = _spec(loaded, 10)
  directory = str(tmp_path / "c")
  teacher_cache.write_cache(directory, spec, _fake_producer(2, 10))
  # Claim more examples than were written: the record count no longer matches.
  meta_path = os.path.join(directory, "shard000of001", "teacher_outputs", "1.0.0", teacher_cache.CACHE_META_FILE)
  with open(meta_path) as f:
    meta = json.load(f)
  meta["index_range"] = [0, 12]
  with open(meta_path, "w") as f:
    json.dump(meta, f)
  with pytest.raises(teacher_cache.CacheMismatchError, match="truncated: 20 records, expected 24"):
    teacher_cache.TeacherCache(directory, spec)


@pytest.mark.claim(17)
def test_interrupted_precompute_leaves_nothing_acceptable(tmp_path):
  loaded = _random_teachers(tmp_path)
  spec = _spec(loaded, 10)
  good = _fake_producer(2, 10)

  def dies_in_second_replay(indices, replay):
    if replay == 1:
      raise KeyboardInterrupt("killed")
    return good(indices, replay)

  directory = str(tmp_path / "c")
  with pytest.raises(KeyboardInterrupt):
    teacher_cache.write_cache(directory, spec, dies_in_second_replay, batch_size=4)
  assert not teacher_cache.cache_exists(directory)
  with pytest.raises(FileNotFoundError, match="no complete teacher cache"):
    teacher_cache.TeacherCache(directory, spec)
  teacher_cache.write_cache(directory, spec, good, batch_size=4)  # a retry succeeds
  assert teacher_cache.TeacherCache(directory, spec).lookup(np.array([2]), 1)["teacher_logits"][0, 0, 0] == 3


def test_bfloat16_storage_round_trip():
  x = np.array([1.0, 3.14159, -2.5e-3, 1e4], np.float32)
  back = teacher_cache.from_storage(teacher_cache.to_storage(x, "bfloat16"), "bfloat16")
  np.testing.assert_allclose(back, x, rtol=2 ** -8)
  assert teacher_cache.to_storage(x, "bfloat16").dtype == np.uint16


def test_sharded_cache_reads_like_one(tmp_path):
  """Each host writes its own index range; any reader sees the whole cache."""
  loaded = _random_teachers(tmp_path)
  spec = _spec(loaded, 10)
  whole, sharded = str(tmp_path / "whole"), str(tmp_path / "sharded")
  teacher_cache.write_cache(whole, spec, _fake_producer(2, 10))
  teacher_cache.write_cache(sharded, spec, _fake_producer(2, 10), shard=0, num_shards=3)
  assert not teacher_cache.cache_exists(sharded)  # shards 1 and 2 missing: refused
  for s in (1, 2):
    teacher_cache.write_cache(sharded, spec, _fake_producer(2, 10), shard=s, num_shards=3)
  a, b = teacher_cache.TeacherCache(whole, spec), teacher_cache.TeacherCache(sharded, spec)
  indices = np.array([9, 0, 4, 3, 7])
  for epoch in (0, 1):
    np.testing.assert_array_equal(a.lookup(indices, epoch)["teacher_logits"], b.lookup(indices, epoch)["teacher_logits"])


def test_large_caches_are_split_into_shards_below_tfds_memory_buffer(tmp_path, monkeypatch):
  """TFDS spills a split over 1 GB through TensorFlow (not installed): precompute writes shards
  below MAX_SHARD_BYTES; a reader sees them as one cache."""
  loaded = _random_teachers(tmp_path)
  spec = _spec(loaded, 10)
  assert teacher_cache.shards_per_host(spec) == 1
  monkeypatch.setattr(teacher_cache, "MAX_SHARD_BYTES", teacher_cache.example_bytes(spec) * 2 * 4)
  assert teacher_cache.shards_per_host(spec) == 3  # 10 examples x 2 replays, 8 records per shard
  big = teacher_cache.example_bytes(dataclasses.replace(spec, num_examples=5000, num_replays=8,
                                                        feature_shapes=((7, 7, 512),) * 3))
  assert big * 5000 * 8 > (1 << 30)  # the Fashion-MNIST-sized case that needed TensorFlow


def test_a_cache_in_the_earlier_int64_records_reads_the_same_under_the_same_key(tmp_path):
  """Raw-bytes records (the default) and the int64 lists of caches written before them hold the
  same values; a reader follows the cache's own encoding, and the encoding is not part of the
  cache's directory key, so an existing cache is still found and used."""
  from mmkd_jax.teachers import stages as teacher_stages  # pylint: disable=import-outside-toplevel
  loaded = _random_teachers(tmp_path)
  spec = _spec(loaded, 10)
  assert spec.record_encoding == "bytes"
  older = dataclasses.replace(spec, record_encoding="int64")
  producer = lambda indices, replay: (_fake_producer(2, 10)(indices, replay)[0],
                                      tuple(np.random.default_rng(replay).normal(size=(len(indices), 8, 8, 64))
                                            .astype(np.float32) + indices[:, None, None, None] for _ in range(2)))
  teacher_cache.write_cache(str(tmp_path / "new"), spec, producer)
  teacher_cache.write_cache(str(tmp_path / "old"), older, producer)
  ((_, meta),) = teacher_cache._complete_shards(str(tmp_path / "old"))
  meta.pop("record_encoding")  # as a cache written before the field existed
  assert teacher_cache.shard_spec(meta).record_encoding == "int64"
  new, old = teacher_cache.TeacherCache(str(tmp_path / "new"), spec), teacher_cache.TeacherCache(str(tmp_path / "old"), spec)
  indices = np.array([9, 0, 4])
  a, b = new.lookup(indices, 1), old.lookup(indices, 1)
  np.testing.assert_array_equal(a["teacher_logits"], b["teacher_logits"])
  for x, y in zip(a["teacher_feat"], b["teacher_feat"]):
    np.testing.assert_array_equal(x, y)
  assert np.abs(a["teacher_feat"][0][0] - 9).max() < 5  # the values written, not zeros
  config = config_lib.base_config()
  config.dataset, config.teacher_dir, config.cache_dir = "digits", str(tmp_path), ""
  assert teacher_stages.cache_dir(config, spec) == teacher_stages.cache_dir(config, older)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_replay_arrays_read_in_bulk_equal_lookup_once_widened(tmp_path, dtype):
  """A whole replay read in chunks, across shards, in the stored dtype: widened to float32 it is
  what ``lookup`` gives record by record (device-resident training holds these arrays)."""
  loaded = _random_teachers(tmp_path)
  spec = _spec(loaded, 10, dtype)
  for s in range(3):
    teacher_cache.write_cache(str(tmp_path / "c"), spec, _fake_producer(2, 10), shard=s, num_shards=3)
  cache = teacher_cache.TeacherCache(str(tmp_path / "c"), spec)
  for replay in (0, 1):
    bulk = cache.replay_arrays(replay, chunk=4)
    each = cache.lookup(np.arange(10), replay)
    assert bulk["teacher_feat"][0].dtype == np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    assert bulk["teacher_logits"].dtype == np.float32
    np.testing.assert_array_equal(bulk["teacher_logits"], each["teacher_logits"])
    for a, b in zip(bulk["teacher_feat"], each["teacher_feat"]):
      np.testing.assert_array_equal(np.asarray(a, np.float32), b)
  assert not np.array_equal(cache.replay_arrays(0)["teacher_logits"], cache.replay_arrays(1)["teacher_logits"])
