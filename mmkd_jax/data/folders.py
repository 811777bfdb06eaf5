"""Offline TFDS builders over the official directory layouts of MIT67 and TinyImageNet (TFDS has
no builder for MIT67; TinyImageNet's official zip is read as it unpacks). The directory is
``config.dataset_source_dir``; nothing is downloaded. Images are stored as their original
encoded files and cut to size on the host (``data/transforms.py``), as the reference does:

* ``mit67`` (Quattoni & Torralba, 2009): ``<dir>/Images/<category>/<file>.jpg`` with
  ``<dir>/TrainImages.txt`` and ``<dir>/TestImages.txt`` listing ``<category>/<file>.jpg``;
  67 classes; RandomResizedCrop(224) + flip, Resize(256) + CenterCrop(224), ImageNet mean/std.
* ``tiny_imagenet`` (``tiny-imagenet-200``): ``<dir>/wnids.txt``,
  ``<dir>/train/<wnid>/images/*.JPEG``, ``<dir>/val/images/*.JPEG`` with
  ``<dir>/val/val_annotations.txt`` (file, wnid, box); 200 classes of 64x64 images;
  RandomResizedCrop(32) + flip (the reference downscales to 32x32), its mean/std. The reference
  evaluates with the *training* transform (random crops at test time, a bug); here evaluation is
  Resize(32) + CenterCrop(32) (docs/methods.md).
"""

from __future__ import annotations


import numpy as np
import tensorflow_datasets as tfds

from mmkd_jax.runs import storage
from mmkd_jax.data.sources import register_dataset


def _missing(name: str, path: str, layout: str) -> FileNotFoundError:
  return FileNotFoundError(f"{name}: {path} does not exist; set config.dataset_source_dir to the unpacked "
                           f"official directory ({layout}); nothing is downloaded")


class _FolderBuilder(tfds.core.GeneratorBasedBuilder):
  """Images listed from a local directory; subclasses define the layout."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  NAME_ = ""
  LAYOUT = ""

  def __init__(self, *, source_dir: str = "", **kwargs):
    self._source_dir = source_dir
    super().__init__(**kwargs)

  def _check(self, *parts: str) -> str:
    path = storage.join(self._source_dir, *parts) if self._source_dir else ""
    if not path or not storage.exists(path):
      raise _missing(self.NAME_, path or "config.dataset_source_dir (empty)", self.LAYOUT)
    return path

  def _classes(self) -> list[str]:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__, disable_shuffling=True,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(num_classes=self.NUM_CLASSES),
            "index": np.int64}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(files) for split, files in self._splits().items()}

  def _generate_examples(self, files):
    classes = {c: i for i, c in enumerate(self._classes())}
    for i, (path, name) in enumerate(files):
      if name not in classes:
        raise ValueError(f"{self.NAME_}: {path} has class {name!r}, not one of the {len(classes)} listed")
      yield i, {"image": path, "label": classes[name], "index": i}


@register_dataset("mit67", offline=True, host_transform=True, image_size=224, eval_resize=256,
                  mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
class Mit67(_FolderBuilder):
  """MIT Indoor 67 from its official directory layout."""
  NAME_ = "mit67"
  NUM_CLASSES = 67
  LAYOUT = "Images/<category>/*.jpg, TrainImages.txt, TestImages.txt"

  def _classes(self) -> list[str]:
    return storage.listdir(self._check("Images"))

  def _splits(self):
    out = {}
    for split, listing in (("train", "TrainImages.txt"), ("test", "TestImages.txt")):
      entries = [line.strip() for line in storage.read_text(self._check(listing)).splitlines() if line.strip()]
      out[split] = [(self._check("Images", e), e.split("/")[0]) for e in entries]
    return out


@register_dataset("tiny_imagenet", offline=True, host_transform=True, image_size=32, eval_resize=32,
                  test_split="validation", mean=(0.4802, 0.4481, 0.3975), std=(0.2770, 0.2691, 0.2822))
class TinyImagenet(_FolderBuilder):
  """TinyImageNet (tiny-imagenet-200) from its official directory layout."""
  NAME_ = "tiny_imagenet"
  NUM_CLASSES = 200
  LAYOUT = "wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, val/val_annotations.txt"

  def _classes(self) -> list[str]:
    return [line.strip() for line in storage.read_text(self._check("wnids.txt")).splitlines() if line.strip()]

  def _splits(self):
    train = []
    for wnid in self._classes():
      folder = self._check("train", wnid, "images")
      train += [(storage.join(folder, f), wnid) for f in storage.listdir(folder)]
    rows = [line.split("\t") for line in storage.read_text(self._check("val", "val_annotations.txt")).splitlines()
            if line.strip()]
    validation = [(self._check("val", "images", r[0]), r[1].strip()) for r in rows]
    return {"train": train, "validation": validation}
