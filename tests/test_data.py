"""Datasets by name (registry, TFDS names, directories), the offline builders, the pipeline and
augmentation."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from mmkd_jax import config as config_lib
from mmkd_jax.data import augment, digits, pipeline, sources
from mmkd_jax.registry import UnknownNameError


def _spec(name="digits", data_dir="", **fields):
  c = config_lib.base_config()
  c.dataset, c.data_dir = name, data_dir
  config_lib.set_fields(c, fields)
  return sources.dataset_spec(c)


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
  spec = _spec()
  np.testing.assert_allclose(spec.mean[0], train.mean(), atol=1e-4)
  np.testing.assert_allclose(spec.std[0], train.std(), atol=1e-4)


def test_unknown_dataset_and_missing_cifar_are_clear_errors(tmp_path):
  with pytest.raises(UnknownNameError, match="unknown dataset 'no_such_data'.*cifar100"):
    _spec("no_such_data")
  with pytest.raises(FileNotFoundError, match="mmkd_jax.data.prepare cifar100"):
    sources.prepare("cifar100", str(tmp_path))


def test_mock_cifar100_streams_batches(tmp_path):
  with tfds.testing.mock_data(num_examples=40):
    spec = _spec("cifar100", str(tmp_path))
    assert (spec.image_shape, spec.num_classes) == ((32, 32, 3), 100)
    source = sources.data_source("cifar100", "train", str(tmp_path))
    batches = list(pipeline.train_batches(source, spec, 16, seed=0, epoch=0))
  assert len(batches) == 2
  assert batches[0]["image"].shape == (16, 32, 32, 3) and batches[0]["image"].dtype == np.uint8
  assert batches[0]["label"].dtype == np.int32 and batches[0]["label"].max() < 100
  assert batches[0]["index"].shape == (16,)


def test_process_shards_are_disjoint_and_rebuild_the_global_batch(data_dir):
  spec = _spec(data_dir=data_dir)
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
  spec = _spec(data_dir=data_dir)
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


