"""``fashion_mnist`` from the four original IDX files on local disk, as an offline TFDS dataset.

Fashion-MNIST (Xiao, Rasul, Vollgraf 2017): 60,000 training and 10,000 test images of 28x28
grey clothing pictures in 10 classes. No download: the ``.gz`` IDX files are read from
``config.dataset_source_dir`` (default: where Debian's ``dataset-fashion-mnist`` package puts
them, ``/usr/share/datasets/fashion-mnist``). Each file's magic number, dimensions, byte count
and label range are checked. Images stay 28x28x1; records are stored in file order
(``disable_shuffling``), so record r of a split is its r-th image.

Augmentation (the usual one for 28x28 data, our choice): zero-pad by 3 (= 28 // 8) + random
28x28 crop + horizontal flip, from (seed, index, replay) like every dataset here.
"""

from __future__ import annotations

import gzip

import numpy as np
import tensorflow_datasets as tfds

from mmkd_jax.runs import storage
from mmkd_jax.data.sources import register_dataset

DEFAULT_SOURCE_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60_000),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10_000)}
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
               "Bag", "Ankle boot")
_IMAGE_MAGIC, _LABEL_MAGIC = 2051, 2049  # 0x00000803 (ubyte, 3 dims), 0x00000801 (ubyte, 1 dim)


class IdxFormatError(ValueError):
  """An IDX file is not what its name says (wrong magic, size or values)."""


def _missing(path: str) -> FileNotFoundError:
  return FileNotFoundError(
      f"fashion_mnist: {path} does not exist; install the files with `apt-get install "
      f"dataset-fashion-mnist` or set config.dataset_source_dir to the directory holding "
      f"{', '.join(f for split in FILES.values() for f in split[:2])}")


def read_idx(path: str, magic: int, ndim: int) -> np.ndarray:
  """The uint8 array of a (gzipped) IDX file, its magic number and byte count checked."""
  if not storage.is_file(path):
    raise _missing(path)
  try:
    data = storage.as_path(path).read_bytes()
    data = gzip.decompress(data) if path.endswith(".gz") else data
  except (OSError, EOFError) as e:
    raise IdxFormatError(f"{path}: cannot be read ({e}); reinstall dataset-fashion-mnist") from e
  header = 4 + 4 * ndim
  if len(data) < header:
    raise IdxFormatError(f"{path}: {len(data)} bytes, shorter than an IDX header")
  found = int.from_bytes(data[:4], "big")
  if found != magic:
    raise IdxFormatError(f"{path}: magic number {found}, expected {magic}")
  shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
  expected = header + int(np.prod(shape))
  if len(data) != expected:
    raise IdxFormatError(f"{path}: {len(data)} bytes, its header {shape} says {expected}")
  return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def load_split(source_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images (N, 28, 28, 1) uint8, labels (N,) int64) of ``split``, checked."""
  image_file, label_file, official = FILES[split]
  images = read_idx(storage.join(source_dir, image_file), _IMAGE_MAGIC, 3)
  labels = read_idx(storage.join(source_dir, label_file), _LABEL_MAGIC, 1)
  if images.shape[1:] != (28, 28):
    raise IdxFormatError(f"{storage.join(source_dir, image_file)}: images of {images.shape[1:]}, expected (28, 28)")
  if len(labels) != len(images):
    raise IdxFormatError(f"{source_dir}: {len(images)} {split} images but {len(labels)} labels")
  if labels.max(initial=0) > 9:
    raise IdxFormatError(f"{storage.join(source_dir, label_file)}: label {labels.max()} outside 0..9")
  if len(images) != official:
    print(f"note: fashion_mnist {split} has {len(images)} images in {source_dir} (the official "
          f"split has {official})")
  return images[..., None], labels.astype(np.int64)


# Normalisation: the statistics of the 60,000 training images (tests/data/test_fashion_mnist.py recomputes them).
@register_dataset("fashion_mnist", mean=(0.2860,), std=(0.3530,), offline=True)
class MmkdFashionMnist(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST from local IDX files, 28x28x1, the official train/test split."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def __init__(self, *, source_dir: str = "", **kwargs):
    self._source_dir = source_dir or DEFAULT_SOURCE_DIR
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=CLASS_NAMES),
            "index": np.int64,
        }),
        supervised_keys=("image", "label"), disable_shuffling=True,
        homepage="https://github.com/zalandoresearch/fashion-mnist")

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    # Read (and check) both splits before TFDS starts writing anything.
    splits = {s: load_split(self._source_dir, s) for s in FILES}
    return {s: self._generate_examples(*arrays) for s, arrays in splits.items()}

  def _generate_examples(self, images: np.ndarray, labels: np.ndarray):
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image, "label": int(label), "index": i}
