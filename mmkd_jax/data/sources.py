"""Datasets by name, read through TFDS random-access data sources (array_record, no TensorFlow).

``config.dataset`` is one of
  * a name registered with ``@register_dataset`` (the built-ins: ``cifar100``, ``cifar10``,
    ``digits``, ``fashion_mnist``; a user registers their own builder the same way),
  * any TFDS dataset name (``tfds.builder(name)``), prepared as array_record under ``data_dir``,
  * a directory holding a prepared TFDS dataset (``tfds.builder_from_directory``),
  * ``folder:<dir>``: images in torchvision's ImageFolder layout (``mmkd_jax.data.image_folder``).
Image shape and number of classes come from the dataset's features; the normalisation from the
registration, ``config.normalization``, or else the training split's own statistics.

Record r of a split is example r; that position is the example index used for augmentation and
for joining the teacher cache.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from mmkd_jax.training import parallel
from mmkd_jax.runs import storage
from mmkd_jax.data import image_folder, transforms
from mmkd_jax.data.tfds_prepare import prepare_quietly, undone_on_failure
from mmkd_jax.errors import UnknownNameError
from mmkd_jax.registry import Registry, origin_of

BuilderFactory = Callable[..., tfds.core.DatasetBuilder]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the trainer needs to know of a dataset, with the configured splits."""
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]   # (H, W, C)
  mean: tuple[float, ...]
  std: tuple[float, ...]
  train_split: str = "train"
  test_split: str = "test"
  image_key: str = "image"
  label_key: str = "label"
  crop_padding: int = 4               # pad-and-crop augmentation; 0 = no crop
  flip: bool = True
  host_transform: bool = False        # variable-size images: RandomResizedCrop / Resize+CenterCrop on the host
  eval_resize: int = 0                # host_transform: the shorter side before the centre crop

  @property
  def image_size(self) -> int:
    return self.image_shape[0]


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
  """A registered dataset: how to build its TFDS builder and what it does not say itself."""
  builder: BuilderFactory | None = None  # (data_dir=..., source_dir=...) -> builder; None: tfds.builder(tfds_name)
  tfds_name: str = ""
  mean: tuple[float, ...] | None = None
  std: tuple[float, ...] | None = None
  train_split: str = "train"
  test_split: str = "test"
  image_key: str = "image"
  label_key: str = "label"
  offline: bool = False            # prepared on first use from local files, never downloads
  crop_padding: int | None = None  # None: image height // 8 (4 at 32x32, as the reference)
  flip: bool = True
  # Variable-size images (data/transforms.py): train RandomResizedCrop(image_size) + flip, eval
  # Resize(eval_resize) + CenterCrop(image_size); image_size 0 = config.image_size.
  host_transform: bool = False
  image_size: int = 0
  eval_resize: int = 0
  # How a raw image becomes one of the dataset's (an exported student's student.json says it, so
  # that `predict` on raw images can tell its user what to do): '' = stored as they come.
  input_note: str = ""


DATASETS: Registry[DatasetEntry] = Registry(
    "dataset", "Use a TFDS name, a prepared TFDS directory, or register a builder with "
    "@mmkd_jax.data.register_dataset in a module listed in config.imports.")


def register_dataset(name: str, **fields: Any) -> Callable:
  """Registers dataset ``name``; ``fields`` are those of ``DatasetEntry`` (mean, std, splits,
  offline...). As a decorator on a ``tfds.core.DatasetBuilder`` subclass (or a factory of
  builders); or, with ``tfds_name=``, a TFDS dataset under this name and these fields, registered
  by the call itself (``register_dataset("cifar100", tfds_name="cifar100", mean=..., std=...)``)."""
  if fields.get("tfds_name"):
    DATASETS.add(name, DatasetEntry(**fields), f"tfds:{fields['tfds_name']}")
    return lambda builder: builder

  def decorator(builder):
    DATASETS.add(name, DatasetEntry(builder=builder, **fields), origin_of(builder))
    return builder
  return decorator


# The built-in TFDS datasets, registered as a user's would be. The reference's CIFAR-100
# normalisation; CIFAR-10 uses its well-known statistics.
register_dataset("cifar100", tfds_name="cifar100", mean=(0.5071, 0.4867, 0.4408), std=(0.2675, 0.2565, 0.2761))
register_dataset("cifar10", tfds_name="cifar10", mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))
# The reference's 224x224 fine-grained datasets: RandomResizedCrop(224) + flip, Resize(256) +
# CenterCrop(224), ImageNet mean/std (its dataset/finegrained.py). TFDS prepares them with a
# download (on a machine with internet: python -m mmkd_jax.data.prepare stanford_dogs).
_IMAGENET_NORM = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
for _name, _tfds in (("stanford_dogs", "stanford_dogs"), ("cub_200_2011", "caltech_birds2011")):
  register_dataset(_name, tfds_name=_tfds, host_transform=True, image_size=224, eval_resize=256, **_IMAGENET_NORM)


def default_data_dir() -> str:
  return os.path.expanduser(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))


def _entry(name: str) -> DatasetEntry:
  if name in DATASETS:
    return DATASETS.get(name)
  if name.startswith(image_folder.PREFIX):
    return DatasetEntry(builder=functools.partial(image_folder.ImageFolder, folder=name[len(image_folder.PREFIX):]),
                        offline=True, input_note=image_folder.INPUT_NOTE)
  if storage.is_url(name) and storage.is_dir(name) or os.path.isdir(os.path.expanduser(name)):
    return DatasetEntry(builder=lambda **_: tfds.builder_from_directory(storage.for_library(name)))
  return DatasetEntry(tfds_name=name)


def builder(name: str, data_dir: str | None = None, source_dir: str = "", image_size: int = 0
            ) -> tfds.core.DatasetBuilder:
  """The TFDS builder of ``name`` (array_record) under ``data_dir``; ``image_size``: the size an
  image folder is resized to (``config.image_size``)."""
  entry = _entry(name)
  data_dir = data_dir or default_data_dir()
  if entry.builder is None:
    try:
      return tfds.builder(entry.tfds_name, data_dir=data_dir, file_format="array_record")
    except tfds.core.registered.DatasetNotFoundError as e:
      raise UnknownNameError(f"unknown dataset {name!r}: not registered ({', '.join(DATASETS.names())}), "
                             f"not a TFDS name and not a directory. {DATASETS.how_to_add}") from e
  kwargs: dict[str, Any] = {"data_dir": data_dir}
  parameters = inspect.signature(entry.builder).parameters
  if source_dir and "source_dir" in parameters:
    kwargs["source_dir"] = source_dir
  if image_size and "image_size" in parameters:
    kwargs["image_size"] = image_size
  if isinstance(entry.builder, type) or any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
    kwargs["file_format"] = "array_record"
  return entry.builder(**kwargs)


def check_image_dataset(name: str, data_dir: str | None = None, source_dir: str = "", image_size: int = 0) -> None:
  """Raises UnknownNameError for an unknown dataset and ValueError for one that is not labelled
  images (from its declared features: nothing is read or prepared)."""
  _features(builder(name, data_dir, source_dir, image_size), _entry(name), name)


def input_note(name: str) -> str:
  """How a raw image becomes one of dataset ``name``'s ('' when they are stored as they come)."""
  return _entry(name).input_note


def dataset_version(config: ml_collections.ConfigDict) -> str:
  """What identifies the contents of the configured dataset beyond its name: an image folder's
  fingerprint (its files and the image size); '' for every other dataset."""
  if not config.dataset.startswith(image_folder.PREFIX):
    return ""
  return builder(config.dataset, config.data_dir or None, "", config.image_size).fingerprint


def prepare(name: str, data_dir: str | None = None, allow_download: bool = False, source_dir: str = "",
            image_size: int = 0) -> None:
  """Makes sure ``name`` is prepared as array_record under ``data_dir``.

  Offline datasets are prepared on first use. Others need a download, which happens only with
  ``allow_download`` (``python -m mmkd_jax.data.prepare``), never during a run.
  """
  data_dir = data_dir or default_data_dir()
  if jax.process_count() > 1:  # one process prepares, the others wait for it
    if jax.process_index() == 0:
      _prepare(name, data_dir, allow_download, source_dir, image_size)
    parallel.sync_hosts(f"dataset {name} prepared")
  _prepare(name, data_dir, allow_download, source_dir, image_size)


def _prepare(name: str, data_dir: str, allow_download: bool, source_dir: str, image_size: int) -> None:
  b = builder(name, data_dir, source_dir, image_size)
  if b.is_prepared():
    return
  if _entry(name).offline or allow_download:
    print(f"preparing dataset {name!r} under {storage.absolute(data_dir)} (once) ...", flush=True)
    if not storage.is_url(data_dir):
      with undone_on_failure(data_dir):
        prepare_quietly(b)
      return
    # array_record writes local files only: prepare on local disk, then upload the dataset's
    # version directory with TFDS's marker (dataset_info.json) last
    with storage.staging_dir(storage.join(data_dir, name)) as local:
      staged = builder(name, local, source_dir, image_size)
      prepare_quietly(staged)
      relative = os.path.relpath(os.fspath(staged.data_path), local)
      storage.copy_tree(os.fspath(staged.data_path), storage.join(data_dir, *relative.split(os.sep)),
                          last=("dataset_info.json",))
    return
  raise FileNotFoundError(
      f"dataset {name!r} is not prepared under {data_dir}. Prepare it once on a machine with "
      f"internet: `python -m mmkd_jax.data.prepare {name} --data_dir {data_dir}` (array_record "
      "format; TensorFlow is not needed), or point --config.data_dir at a prepared copy.")


def data_source(name: str, split: str, data_dir: str | None = None, source_dir: str = "", image_size: int = 0) -> Any:
  """A random-access source of ``{'image': uint8 HWC, 'label': int, ...}`` records."""
  data_dir = data_dir or default_data_dir()
  entry = _entry(name)
  if entry.offline:
    prepare(name, data_dir, source_dir=source_dir, image_size=image_size)
    return builder(name, data_dir, source_dir, image_size).as_data_source(split=split)
  try:
    if entry.builder is not None:
      return builder(name, data_dir, source_dir, image_size).as_data_source(split=split)
    return tfds.data_source(entry.tfds_name, split=split, data_dir=data_dir, download=False,
                            builder_kwargs={"file_format": "array_record"})
  except (NotImplementedError, AssertionError, FileNotFoundError, ValueError, KeyError) as e:
    # TFDS reports a missing offline dataset as a TFRECORD NotImplementedError; say what it is.
    raise FileNotFoundError(
        f"dataset {name!r} ({split}) could not be opened under {data_dir}: {e}. Prepare it once "
        f"with `python -m mmkd_jax.data.prepare {name} --data_dir {data_dir}`.") from e


def read_records(source: Any, indices: np.ndarray, spec: DatasetSpec,
                 train_view: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
  """Reads records by index into ``{'image': (N, H, W, C) uint8, 'label': (N,) int32}``.

  Datasets of variable-size images (``spec.host_transform``) are cut to ``spec.image_shape``
  here: the training view of ``train_view = (augmentation seed, replay)`` (RandomResizedCrop +
  flip of each (index, replay)), else the evaluation view (Resize + CenterCrop).
  """
  keys = [int(i) for i in indices]
  try:
    records = source.__getitems__(keys)
  except (AttributeError, TypeError):  # tfds.testing.mock_data patches it with another signature
    records = [source[k] for k in keys]
  raw = [np.asarray(r[spec.image_key], np.uint8) for r in records]
  if spec.host_transform:
    size = spec.image_shape[0]
    if train_view is not None:
      raw = [transforms.train_view(x, size, train_view[0], k, train_view[1]) for x, k in zip(raw, keys)]
    else:
      raw = [transforms.eval_view(x, size, spec.eval_resize) for x in raw]
  images = np.stack(raw)
  if images.ndim == 3:  # (N, H, W) grey images without a channel axis
    images = images[..., None]
  return {"image": images, "label": np.asarray([int(r[spec.label_key]) for r in records], np.int32)}


def image_statistics(source: Any, spec: DatasetSpec, max_examples: int = 10_000) -> tuple[tuple, tuple]:
  """Per-channel mean and std of images in [0, 1] over (a fixed sample of) a split."""
  n = len(source)
  rows = np.random.default_rng(0).permutation(n)[:max_examples] if n > max_examples else np.arange(n)
  total = np.zeros(spec.image_shape[-1])
  total_sq = np.zeros(spec.image_shape[-1])
  count = 0
  for lo in range(0, len(rows), 1000):
    x = read_records(source, np.sort(rows[lo:lo + 1000]), spec)["image"].astype(np.float64) / 255.0
    total += x.sum(axis=(0, 1, 2))
    total_sq += np.square(x).sum(axis=(0, 1, 2))
    count += x.shape[0] * x.shape[1] * x.shape[2]
  mean = total / count
  return tuple(float(m) for m in mean), tuple(float(s) for s in np.sqrt(total_sq / count - mean ** 2))


@functools.lru_cache(maxsize=32)
def _computed_statistics(name: str, data_dir: str, source_dir: str, image_size: int, split: str, spec: DatasetSpec):
  return image_statistics(data_source(name, split, data_dir, source_dir, image_size), spec)


def _features(b: tfds.core.DatasetBuilder, entry: DatasetEntry, name: str) -> tuple[tuple[int, int, int], int]:
  features = b.info.features
  try:
    image, _ = features[entry.image_key], features[entry.label_key]
  except KeyError as e:
    raise ValueError(f"dataset {name!r} has no feature {e}; its features are "
                     f"{', '.join(features.keys())}: distillation here needs labelled images") from e
  shape = tuple(image.shape)
  if len(shape) == 2:
    shape = shape + (1,)
  if entry.host_transform:  # cut to a fixed size on the host: only the channels are the image's
    shape = (None, None, shape[-1] or 3)
    return shape, _num_classes(features, entry, name)
  if len(shape) != 3 or any(d is None for d in shape):
    raise ValueError(f"dataset {name!r}: images of shape {image.shape} are not fixed-size HWC; "
                     "register a builder that stores them at one size")
  return shape, _num_classes(features, entry, name)


def _num_classes(features, entry: DatasetEntry, name: str) -> int:
  num_classes = getattr(features[entry.label_key], "num_classes", None)
  if not num_classes:
    raise ValueError(f"dataset {name!r}: its {entry.label_key!r} feature is not a ClassLabel")
  return int(num_classes)


def dataset_spec(config: ml_collections.ConfigDict) -> DatasetSpec:
  """The configured dataset with its shape, classes, normalisation and the configured splits
  (TFDS slicing such as 'train[:85%]' / 'train[85%:]' for a validation split; a prefix slice of
  the training split keeps record positions, so augmentation and cached teacher outputs line up)."""
  name, data_dir = config.dataset, config.data_dir or default_data_dir()
  entry = _entry(name)
  shape, num_classes = _features(builder(name, data_dir, config.dataset_source_dir, config.image_size), entry, name)
  if entry.host_transform:
    size = config.image_size or entry.image_size
    shape = (size, size, shape[-1])
    spec = DatasetSpec(name, num_classes, shape, (), (), config.train_split or entry.train_split,
                       config.eval_split or entry.test_split, entry.image_key, entry.label_key, 0, False,
                       True, entry.eval_resize * size // (entry.image_size or size) or round(size * 256 / 224))
  else:
    spec = DatasetSpec(name, num_classes, shape, (), (), config.train_split or entry.train_split,
                       config.eval_split or entry.test_split, entry.image_key, entry.label_key,
                       shape[0] // 8 if entry.crop_padding is None else entry.crop_padding, entry.flip)
  mean, std = tuple(config.normalization.mean), tuple(config.normalization.std)
  if not mean or not std:
    if entry.mean is not None:
      mean, std = entry.mean, entry.std
    else:  # statistics of the whole default training split, whatever split this run trains on
      mean, std = _computed_statistics(name, data_dir, config.dataset_source_dir, config.image_size,
                                       entry.train_split, spec)
  if len(mean) != shape[-1] or len(std) != shape[-1]:
    raise ValueError(f"config.normalization: dataset {name!r} has {shape[-1]} channels, the "
                     f"normalisation gives mean {mean} and std {std}")
  return dataclasses.replace(spec, mean=tuple(mean), std=tuple(std))


@dataclasses.dataclass
class Dataset:
  """The configured dataset's spec and its train / evaluation sources, opened once.

  ``train_indices``: the record positions training draws from (``config.train_classes``: only
  those classes' records; None = all). ``train_labels``: the label of every record position as
  training sees it (``config.label_noise``), or None for the records' own labels.
  """
  spec: DatasetSpec
  train: Any
  test: Any
  train_indices: np.ndarray | None = None
  train_labels: np.ndarray | None = None

  @property
  def num_train(self) -> int:
    return len(self.train) if self.train_indices is None else len(self.train_indices)


def record_labels(source: Any, spec: DatasetSpec, chunk: int = 1024) -> np.ndarray:
  """The label of every record of ``source``, in record order."""
  out = []
  for lo in range(0, len(source), chunk):
    keys = list(range(lo, min(lo + chunk, len(source))))
    try:
      records = source.__getitems__(keys)
    except (AttributeError, TypeError):
      records = [source[k] for k in keys]
    out.append(np.asarray([int(r[spec.label_key]) for r in records], np.int64))
  return np.concatenate(out) if out else np.zeros(0, np.int64)


def symmetric_noise(labels: np.ndarray, rate: float, num_classes: int, seed: int) -> np.ndarray:
  """Each label replaced, with probability ``rate``, by one of the other classes drawn uniformly;
  a function of (seed, record position) only."""
  rng = np.random.default_rng([seed, 0x6E6F6973])
  flip = rng.random(len(labels)) < rate
  offsets = rng.integers(1, num_classes, len(labels))
  return np.where(flip, (labels + offsets) % num_classes, labels).astype(np.int32)


def open_dataset(config: ml_collections.ConfigDict) -> Dataset:
  spec = dataset_spec(config)
  open_split = functools.partial(data_source, config.dataset, data_dir=config.data_dir or None,
                                 source_dir=config.dataset_source_dir, image_size=config.image_size)
  dataset = Dataset(spec, open_split(split=spec.train_split), open_split(split=spec.test_split))
  classes, rate = tuple(config.get("train_classes", ())), float(config.get("label_noise", 0.0))
  if classes or rate:
    bad = [k for k in classes if not 0 <= int(k) < spec.num_classes]
    if bad or not 0.0 <= rate < 1.0:
      raise ValueError(f"config.train_classes {classes} must be classes of the {spec.num_classes} of "
                       f"{config.dataset!r} and config.label_noise {rate} a rate in [0, 1)")
    labels = record_labels(dataset.train, spec)
    if classes:
      dataset.train_indices = np.flatnonzero(np.isin(labels, np.asarray(classes)))
    if rate:
      dataset.train_labels = symmetric_noise(labels, rate, spec.num_classes, int(config.label_noise_seed))
  return dataset


def known_names() -> Sequence[str]:
  return DATASETS.names()
