"""Datasets by name (registry, TFDS names, directories), the offline builders, the pipeline and
augmentation."""

from __future__ import annotations

import os
import re

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from mmkd_jax import config as config_lib
from mmkd_jax.data import augment, digits, pipeline, sources
from mmkd_jax.errors import UnknownNameError


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


@pytest.mark.claim(7, 27)
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




def _write_idx(path, magic, array):
  import gzip  # pylint: disable=import-outside-toplevel
  header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def _fake_fashion(directory, n_train=48, n_test=20, seed=0):
  from mmkd_jax.data import fashion_mnist  # pylint: disable=import-outside-toplevel
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(seed)
  arrays = {}
  for split, n in (("train", n_train), ("test", n_test)):
    images, labels = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
    image_file, label_file, _ = fashion_mnist.FILES[split]
    _write_idx(os.path.join(directory, image_file), 2051, images)
    _write_idx(os.path.join(directory, label_file), 2049, labels)
    arrays[split] = (images, labels)
  return arrays


def test_fashion_mnist_from_local_idx_files(tmp_path):
  """The builder parses the IDX files the Debian package ships (here small ones written by the
  test) into a 28x28x1 TFDS dataset, in file order, through the config like any dataset."""
  arrays = _fake_fashion(str(tmp_path / "raw"))
  spec = _spec("fashion_mnist", str(tmp_path / "tfds"), dataset_source_dir=str(tmp_path / "raw"))
  assert (spec.image_shape, spec.num_classes, spec.mean, spec.crop_padding) == ((28, 28, 1), 10, (0.2860,), 3)
  train = sources.data_source("fashion_mnist", "train", str(tmp_path / "tfds"), str(tmp_path / "raw"))
  test = sources.data_source("fashion_mnist", "test", str(tmp_path / "tfds"), str(tmp_path / "raw"))
  assert (len(train), len(test)) == (48, 20)
  batch = sources.read_records(test, np.arange(5), spec)
  np.testing.assert_array_equal(batch["image"][..., 0], arrays["test"][0][:5])
  np.testing.assert_array_equal(batch["label"], arrays["test"][1][:5])
  augmented = augment.augment_for(spec, jnp.asarray(batch["image"]), jnp.arange(5), 0, 0)
  assert augmented.shape == (5, 28, 28, 1)


@pytest.mark.claim(26)
@pytest.mark.parametrize("damage, message", [
    ("missing", "does not exist; install the files with `apt-get install dataset-fashion-mnist` or set "
                "config.dataset_source_dir"),
    ("truncated", "bytes, its header"),
    ("magic", "magic number 2049, expected 2051"),
    ("labels", "label 12 outside 0..9"),
])
def test_fashion_mnist_bad_files_are_named(tmp_path, damage, message):
  from mmkd_jax.data import fashion_mnist  # pylint: disable=import-outside-toplevel
  raw = str(tmp_path / "raw")
  _fake_fashion(raw)
  images = os.path.join(raw, fashion_mnist.FILES["train"][0])
  if damage == "missing":
    os.remove(images)
  elif damage == "truncated":
    import gzip  # pylint: disable=import-outside-toplevel
    with gzip.open(images) as f:
      data = f.read()
    with gzip.open(images, "wb") as f:
      f.write(data[:-7])
  elif damage == "magic":
    _write_idx(images, 2049, np.zeros((4, 28, 28)))
  else:
    _write_idx(os.path.join(raw, fashion_mnist.FILES["train"][1]), 2049, np.full(48, 12))
  with pytest.raises((FileNotFoundError, ValueError), match=re.escape(message)):
    sources.data_source("fashion_mnist", "train", str(tmp_path / "tfds"), raw)
  assert not os.path.exists(tmp_path / "tfds" / "mmkd_fashion_mnist" / "1.0.0" / "dataset_info.json")


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                    reason="the Debian package dataset-fashion-mnist is not installed")
def test_fashion_mnist_normalisation_matches_the_real_training_split():
  from mmkd_jax.data import fashion_mnist  # pylint: disable=import-outside-toplevel
  images, labels = fashion_mnist.load_split(fashion_mnist.DEFAULT_SOURCE_DIR, "train")
  assert images.shape == (60000, 28, 28, 1) and np.bincount(labels).tolist() == [6000] * 10
  x = images / 255.0
  np.testing.assert_allclose((x.mean(), x.std()), (0.2860, 0.3530), atol=1e-4)


def test_any_tfds_directory_and_computed_normalisation(tmp_path):
  """A prepared TFDS directory is a dataset too; without registered statistics the training
  split's are computed."""
  from mmkd_jax.data import digits as digits_lib  # pylint: disable=import-outside-toplevel
  builder = digits_lib.MmkdDigits(data_dir=str(tmp_path), file_format="array_record")
  builder.download_and_prepare(file_format="array_record")
  directory = os.path.join(str(tmp_path), "mmkd_digits", "1.0.0")
  spec = _spec(directory, str(tmp_path))
  assert (spec.image_shape, spec.num_classes) == ((32, 32, 3), 10)
  np.testing.assert_allclose(spec.mean, (0.3059,) * 3, atol=1e-4)
  np.testing.assert_allclose(spec.std, (0.3763,) * 3, atol=1e-4)
