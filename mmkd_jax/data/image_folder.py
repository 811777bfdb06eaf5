"""``--config.dataset=folder:<dir>``: your own images in torchvision's ``ImageFolder`` layout, a
folder per class, prepared as a TFDS dataset on first use.

Layouts: ``<dir>/train/<class>/*`` with ``<dir>/test/<class>/*`` (or ``val/``) as the test split;
or ``<dir>/<class>/*``, where a fixed fifth of each class's images (chosen by a hash of the file's
path, so adding images never moves the others) is held out as the test split. Classes are the
sorted folder names; images of any size and mode (.jpg, .jpeg, .png, .bmp, .gif, .webp, .tif,
.tiff) are converted to RGB and resized (bilinear, aspect ratio not kept) to
``config.image_size`` x ``config.image_size`` (0 = 32, the CIFAR zoo's input). Normalisation: the
training split's own mean and std; augmentation: pad-and-crop and flips, as for CIFAR.

The prepared copy lives under ``<data_dir>/image_folder/<folder name>-<fingerprint>``: the
fingerprint covers every file's path, size and modification time and the image size, so a changed
folder is prepared again (the old copy is left), and teachers, teacher caches and student runs of
the old contents are refused or kept apart (``dataset_version``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

PREFIX = "folder:"
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DEFAULT_SIZE = 32
HELD_OUT = 0.2   # without a test/ (or val/) folder: the share of each class held out for testing
INPUT_NOTE = ("converted to RGB and resized bilinearly to the student's size, without keeping the aspect ratio "
              "(mmkd_jax.data.image_folder): predict(images, resize=True) does the same")


@dataclasses.dataclass(frozen=True)
class Layout:
  """What a folder holds: its classes and each split's (relative path, class index) pairs."""
  root: str
  classes: tuple[str, ...]
  splits: dict
  fingerprint: str


def _images(directory: str) -> list[str]:
  found = []
  for root, dirs, files in os.walk(directory):
    dirs.sort()
    found += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(EXTENSIONS)]
  return found


def _class_dirs(directory: str) -> list[str]:
  return sorted(d for d in os.listdir(directory) if os.path.isdir(os.path.join(directory, d)) and not d.startswith("."))


def _held_out(relative: str) -> bool:
  return int(hashlib.sha1(relative.encode()).hexdigest()[:8], 16) / 16 ** 8 < HELD_OUT


@functools.lru_cache(maxsize=8)
def scan(folder: str, image_size: int = 0) -> Layout:
  """The layout of ``folder`` (read once per command); an error naming the problem and the
  expected layout if it has none."""
  root = os.path.abspath(os.path.expanduser(folder))
  expected = (f"{PREFIX}{folder}: expected a folder per class (<dir>/<class>/<image>), or train/ and test/ "
              "folders holding one")
  if not os.path.isdir(root):
    raise FileNotFoundError(f"{PREFIX}{folder}: {root} is not a directory; {expected.split(': ', 1)[1]}")
  test_dir = next((d for d in ("test", "val") if os.path.isdir(os.path.join(root, d))), None)
  split_roots = ({"train": os.path.join(root, "train"), "test": os.path.join(root, test_dir)}
                 if os.path.isdir(os.path.join(root, "train")) and test_dir else {"train": root})
  classes = tuple(_class_dirs(split_roots["train"]))
  if not classes:
    raise ValueError(f"{expected}; {split_roots['train']} has no class folders")
  splits: dict = {"train": [], "test": []}
  for split, split_root in split_roots.items():
    unknown = sorted(set(_class_dirs(split_root)) - set(classes))
    if unknown:
      raise ValueError(f"{PREFIX}{folder}: {split_root} has classes the training folder lacks: {', '.join(unknown)}")
    for label, name in enumerate(classes):
      for path in _images(os.path.join(split_root, name)):
        relative = os.path.relpath(path, root)
        target = split if len(split_roots) == 2 else ("test" if _held_out(relative) else "train")
        splits[target].append((relative, label))
  empty = [s for s in ("train", "test") if not splits[s]]
  if empty:
    raise ValueError(f"{expected}; no images ({', '.join(EXTENSIONS)}) for the {' and '.join(empty)} split in {root}")
  digest = hashlib.sha256(f"{image_size or DEFAULT_SIZE}".encode())
  for split in ("train", "test"):
    for relative, label in splits[split]:
      stat = os.stat(os.path.join(root, relative))
      digest.update(f"{split}\0{relative}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
  return Layout(root, classes, splits, digest.hexdigest()[:12])


class ImageFolder(tfds.core.GeneratorBasedBuilder):
  """A folder of class folders, resized to one size and stored as array_record."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def __init__(self, *, folder: str, image_size: int = 0, **kwargs):
    self._layout = scan(folder, image_size)
    self._size = image_size or DEFAULT_SIZE
    name = "".join(ch if ch.isalnum() else "_" for ch in os.path.basename(self._layout.root)) or "folder"
    config = tfds.core.BuilderConfig(name=f"{name}-{self._layout.fingerprint}", version=self.VERSION)
    super().__init__(config=config, **kwargs)

  @property
  def fingerprint(self) -> str:
    return self._layout.fingerprint

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=f"{self._layout.root} at {self._size}x{self._size}",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(self._size, self._size, 3), dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=self._layout.classes),
            "index": np.int64,
        }), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(pairs) for split, pairs in self._layout.splits.items()}

  def _generate_examples(self, pairs):
    for i, (relative, label) in enumerate(pairs):
      with Image.open(os.path.join(self._layout.root, relative)) as image:
        pixels = np.asarray(image.convert("RGB").resize((self._size, self._size), Image.BILINEAR), np.uint8)
      yield i, {"image": pixels, "label": label, "index": i}
