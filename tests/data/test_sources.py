"""Datasets by name: the registry, TFDS names (mock CIFAR-100) and prepared directories, computed
normalisation, and the errors of an unknown or unprepared dataset."""
from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mmkd_jax.data import pipeline, sources
from mmkd_jax.errors import UnknownNameError

from helpers import dataset_spec_of


@pytest.mark.claim(7, 27)
def test_unknown_dataset_and_missing_cifar_are_clear_errors(tmp_path):
  with pytest.raises(UnknownNameError, match="unknown dataset 'no_such_data'.*cifar100"):
    dataset_spec_of("no_such_data")
  with pytest.raises(FileNotFoundError, match="mmkd_jax.data.prepare cifar100"):
    sources.prepare("cifar100", str(tmp_path))


def test_mock_cifar100_streams_batches(tmp_path):
  with tfds.testing.mock_data(num_examples=40):
    spec = dataset_spec_of("cifar100", str(tmp_path))
    assert (spec.image_shape, spec.num_classes) == ((32, 32, 3), 100)
    source = sources.data_source("cifar100", "train", str(tmp_path))
    batches = list(pipeline.train_batches(source, spec, 16, seed=0, epoch=0))
  assert len(batches) == 2
  assert batches[0]["image"].shape == (16, 32, 32, 3) and batches[0]["image"].dtype == np.uint8
  assert batches[0]["label"].dtype == np.int32 and batches[0]["label"].max() < 100
  assert batches[0]["index"].shape == (16,)


def test_any_tfds_directory_and_computed_normalisation(tmp_path):
  """A prepared TFDS directory is a dataset too; without registered statistics the training
  split's are computed."""
  from mmkd_jax.data import digits as digits_lib  # pylint: disable=import-outside-toplevel
  builder = digits_lib.MmkdDigits(data_dir=str(tmp_path), file_format="array_record")
  builder.download_and_prepare(file_format="array_record")
  directory = os.path.join(str(tmp_path), "mmkd_digits", "1.0.0")
  spec = dataset_spec_of(directory, str(tmp_path))
  assert (spec.image_shape, spec.num_classes) == ((32, 32, 3), 10)
  np.testing.assert_allclose(spec.mean, (0.3059,) * 3, atol=1e-4)
  np.testing.assert_allclose(spec.std, (0.3763,) * 3, atol=1e-4)
