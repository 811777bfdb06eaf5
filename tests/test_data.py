"""TFDS sources, the digits builder, the pipeline, augmentation and the teacher cache."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from mmkd_jax import teachers as teachers_lib
from mmkd_jax.data import augment, digits, pipeline, sources, teacher_cache
from mmkd_jax.models import get_model


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def test_digits_prepares_offline_with_documented_split(data_dir):
  train = sources.data_source("digits", "train", data_dir)
  test = sources.data_source("digits", "test", data_dir)
  assert (len(train), len(test)) == (digits.NUM_TRAIN, digits.NUM_TEST) == (1438, 359)
  record = train[5]
  assert record["image"].shape == (32, 32, 3) and record["image"].dtype == np.uint8
  # Record r is example r of the split (no write-time shuffling): sklearn example 6 (5 -> i % 5 != 4).
  images, labels = digits.digits_as_images()
  np.testing.assert_array_equal(record["image"], images[digits.split_indices("train")[5]])
  assert int(record["label"]) == labels[digits.split_indices("train")[5]]
  assert int(test[0]["label"]) == labels[4]


def test_digits_normalisation_constants_match_training_split():
  images, _ = digits.digits_as_images()
  train = images[digits.split_indices("train")] / 255.0
  spec = sources.get_spec("digits")
  np.testing.assert_allclose(spec.mean[0], train.mean(), atol=1e-4)
  np.testing.assert_allclose(spec.std[0], train.std(), atol=1e-4)


def test_unknown_dataset_and_missing_cifar_are_clear_errors(tmp_path):
  with pytest.raises(ValueError, match="Unknown dataset 'imagenet'.*cifar100"):
    sources.get_spec("imagenet")
  with pytest.raises(FileNotFoundError, match="mmkd_jax.data.prepare cifar100"):
    sources.prepare("cifar100", str(tmp_path))


def test_mock_cifar100_streams_batches(tmp_path):
  with tfds.testing.mock_data(num_examples=40):
    spec = sources.get_spec("cifar100")
    source = sources.data_source("cifar100", "train", str(tmp_path))
    batches = list(pipeline.train_batches(source, spec, 16, seed=0, epoch=0))
  assert len(batches) == 2
  assert batches[0]["image"].shape == (16, 32, 32, 3) and batches[0]["image"].dtype == np.uint8
  assert batches[0]["label"].dtype == np.int32 and batches[0]["label"].max() < 100
  assert batches[0]["index"].shape == (16,)


def test_process_shards_are_disjoint_and_rebuild_the_global_batch(data_dir):
  spec = sources.get_spec("digits")
  source = sources.data_source("digits", "train", data_dir)
  whole = list(pipeline.train_batches(source, spec, 64, seed=3, epoch=1))
  parts = [list(pipeline.train_batches(source, spec, 64, 3, 1, process_index=p, process_count=4))
           for p in range(4)]
  for b, batch in enumerate(whole):
    pieces = [parts[p][b]["index"] for p in range(4)]
    np.testing.assert_array_equal(np.concatenate(pieces), batch["index"])
  seen = np.concatenate([b["index"] for b in whole])
  assert len(np.unique(seen)) == len(seen) == 22 * 64
  # Another epoch is another permutation; resuming at batch k yields the same batches.
  other = next(iter(pipeline.train_batches(source, spec, 64, 3, 2)))
  assert not np.array_equal(other["index"], whole[0]["index"])
  resumed = list(pipeline.train_batches(source, spec, 64, 3, 1, start_batch=5))
  np.testing.assert_array_equal(resumed[0]["index"], whole[5]["index"])


def test_eval_covers_split_exactly_once(data_dir):
  spec = sources.get_spec("digits")
  source = sources.data_source("digits", "test", data_dir)
  for processes in (1, 2):
    seen = []
    for p in range(processes):
      for batch in pipeline.eval_batches(source, spec, 64, p, processes):
        seen.extend(batch["index"][batch["mask"] > 0].tolist())
    assert sorted(seen) == list(range(359))


def test_augmentation_is_reproducible_and_differs_across_replays():
  images = jnp.asarray(np.random.default_rng(0).integers(0, 255, (16, 32, 32, 3)), jnp.uint8)
  index = jnp.arange(16) + 100
  a = augment.augment(images, index, 0, seed=5)
  b = augment.augment(images, index, 0, seed=5)
  c = augment.augment(images, index, 1, seed=5)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(np.asarray(a), np.asarray(c))
  # Per-example: the view of example i does not depend on the other examples of the batch.
  single = augment.augment(images[3:4], index[3:4], 0, seed=5)
  np.testing.assert_array_equal(single[0], a[3])
  dy, dx, flip = augment.crop_flip_params(5, index, 0)
  assert int(dy.min()) >= 0 and int(dy.max()) <= 8 and int(dx.max()) <= 8
  assert 0 < int(flip.sum()) < 16


def test_augmentation_is_a_padded_crop():
  image = jnp.arange(32 * 32 * 3, dtype=jnp.int32).reshape(1, 32, 32, 3).astype(jnp.uint8)
  out = np.asarray(augment.augment(image, jnp.array([7]), 2, seed=1))[0]
  dy, dx, flip = (int(v[0]) for v in augment.crop_flip_params(1, jnp.array([7]), 2))
  padded = np.pad(np.asarray(image[0]), ((4, 4), (4, 4), (0, 0)))
  expected = padded[dy:dy + 32, dx:dx + 32]
  np.testing.assert_array_equal(out, expected[:, ::-1] if flip else expected)


def _random_teachers(tmp_path, n=2):
  loaded = []
  for i in range(n):
    model = get_model("resnet8", 10)
    variables = model.init(jax.random.key(i), jnp.zeros((1, 32, 32, 3)))
    path = str(tmp_path / f"t{i}")
    teachers_lib.save_teacher(path, "resnet8", 10, variables, {"dataset": "digits"})
    loaded.append(teachers_lib.load_teacher(f"t{i}", "resnet8", 10, path))
  return loaded


def _spec(loaded, n, dtype="bfloat16", replays=2, seed=0):
  return teacher_cache.CacheSpec(tuple(t.name for t in loaded), tuple(t.fingerprint for t in loaded),
                                 "digits", "train", n, seed, replays, "feat[-2]", 10,
                                 tuple(tuple(s) for s in teachers_lib.feature_shapes(loaded)), dtype)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cache_reproduces_live_teacher_outputs(tmp_path, data_dir, dtype):
  ds = sources.get_spec("digits")
  source = sources.data_source("digits", "train", data_dir)
  loaded = _random_teachers(tmp_path)
  n = 40
  spec = _spec(loaded, n, dtype)
  variables = tuple(t.variables for t in loaded)
  forward = jax.jit(lambda images, index, replay: teachers_lib.augmented_teacher_outputs(
      loaded, variables, images, index, replay, 0, ds.mean, ds.std))

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
