"""``mmkd_digits``: scikit-learn's bundled handwritten digits as an offline TFDS dataset.

1,797 real 8x8 images (16 grey levels) of the digits 0-9, shipped inside scikit-learn, so it
prepares with no network. Each image is scaled to 0-255, upsampled 4x (nearest neighbour) to
32x32 and repeated over 3 channels, so the CIFAR model zoo and its augmentation run unchanged.

Split (fixed): example i of ``sklearn.datasets.load_digits()`` goes to ``test`` when
``i % 5 == 4`` (359 examples) and to ``train`` otherwise (1,438 examples). Records are stored
in generation order (``disable_shuffling``), so record r of a split is its r-th example.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from mmkd_jax.data.sources import register_dataset

NUM_TRAIN = 1438
NUM_TEST = 359


def digits_as_images() -> tuple[np.ndarray, np.ndarray]:
  """All 1,797 digits as (N, 32, 32, 3) uint8 images and (N,) labels."""
  # imported here: scikit-learn takes ~2 s to import, and only preparing the dataset needs it
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  digits = load_digits()
  grey = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # (N, 8, 8), 0..16 -> 0..255
  big = np.kron(grey, np.ones((1, 4, 4), np.uint8))  # nearest-neighbour 4x upsampling
  return np.repeat(big[..., None], 3, axis=-1), digits.target.astype(np.int64)


def split_indices(split: str, total: int = 1797) -> np.ndarray:
  is_test = np.arange(total) % 5 == 4
  return np.flatnonzero(is_test if split == "test" else ~is_test)


# Normalisation: the statistics of the training split (checked by tests/data/test_digits.py).
@register_dataset("digits", mean=(0.3059,) * 3, std=(0.3763,) * 3, offline=True,
                  input_note="scikit-learn's 8x8 digits (values 0..16) scaled to 0..255, upsampled 4x (nearest "
                             "neighbour) to 32x32 and repeated over RGB: mmkd_jax.data.digits.digits_as_images")
class MmkdDigits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn digits, 32x32x3, fixed train/test split, prepared offline."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(32, 32, 3), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=10),
            "index": np.int64,
        }),
        supervised_keys=("image", "label"),
        disable_shuffling=True,
        homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {"train": self._generate_examples("train"), "test": self._generate_examples("test")}

  def _generate_examples(self, split: str):
    images, labels = digits_as_images()
    for position, i in enumerate(split_indices(split, len(labels))):
      yield position, {"image": images[i], "label": int(labels[i]), "index": position}
