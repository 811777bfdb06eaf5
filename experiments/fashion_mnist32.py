"""``fashion_mnist32``: Fashion-MNIST in the form the original PyTorch MMKD code's CIFAR models need,
a plug-in dataset (``--config.imports='("experiments/fashion_mnist32.py",)'``).

The 28x28 grey images zero-padded by 2 pixels on each side to 32x32 and repeated over 3 channels,
from the same IDX files as ``fashion_mnist`` (Debian's ``dataset-fashion-mnist``). The original's
resnet / wrn / vgg end in an 8x8 (or 4x4) average pool sized for 32x32 inputs and their first
convolution takes 3 channels; experiments/pytorch_end_to_end.py trains both codes on this form.
Augmentation: the CIFAR one (pad 4 and crop 32, horizontal flip). Mean and std: computed from the
training split.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from mmkd_jax.data import fashion_mnist
from mmkd_jax.data.sources import register_dataset


def to_rgb32(images: np.ndarray) -> np.ndarray:
  """(N, 28, 28, 1) uint8 -> (N, 32, 32, 3) uint8: zero border of 2, grey repeated over RGB."""
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
  return np.repeat(padded, 3, axis=-1)


@register_dataset("fashion_mnist32", offline=True)
class FashionMnist32(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST at 32x32x3 (zero border, grey repeated), the official train/test split."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def __init__(self, *, source_dir: str = "", **kwargs):
    self._source_dir = source_dir or fashion_mnist.DEFAULT_SOURCE_DIR
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(32, 32, 3), dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=fashion_mnist.CLASS_NAMES),
            "index": np.int64,
        }),
        supervised_keys=("image", "label"), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    splits = {s: fashion_mnist.load_split(self._source_dir, s) for s in fashion_mnist.FILES}
    return {s: self._generate_examples(*arrays) for s, arrays in splits.items()}

  def _generate_examples(self, images: np.ndarray, labels: np.ndarray):
    for i, (image, label) in enumerate(zip(to_rgb32(images), labels)):
      yield i, {"image": image, "label": int(label), "index": i}
