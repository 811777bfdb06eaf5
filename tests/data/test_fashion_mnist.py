"""Fashion-MNIST from local IDX files: read and checked, bad files named, the normalisation of the real
training split."""
from __future__ import annotations

import os
import re

import jax.numpy as jnp
import numpy as np
import pytest

from mmkd_jax.data import augment, sources

from helpers import dataset_spec_of


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
  spec = dataset_spec_of("fashion_mnist", str(tmp_path / "tfds"), dataset_source_dir=str(tmp_path / "raw"))
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
