"""The offline digits builder: prepared without a network, its documented split, its normalisation."""
from __future__ import annotations


import numpy as np
import pytest

from mmkd_jax.data import digits, sources

from helpers import dataset_spec_of



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
  spec = dataset_spec_of()
  np.testing.assert_allclose(spec.mean[0], train.mean(), atol=1e-4)
  np.testing.assert_allclose(spec.std[0], train.std(), atol=1e-4)
