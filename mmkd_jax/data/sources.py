"""The datasets this library trains on, read through TFDS random-access data sources.

Every dataset is stored as array_record and read with ``tfds.data_source`` (no TensorFlow).
Record r of a split is example r; that position is the example index used for
augmentation and for joining the teacher cache.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  tfds_name: str
  num_classes: int
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  train_split: str = "train"
  test_split: str = "test"
  image_key: str = "image"
  label_key: str = "label"
  image_size: int = 32
  offline: bool = False  # prepared from bundled data, never downloads


# The reference's CIFAR-100 normalisation; CIFAR-10 uses its own well-known statistics; digits
# uses the statistics of its training split (checked by tests/test_data.py).
DATASETS: dict[str, DatasetSpec] = {
    "cifar100": DatasetSpec("cifar100", 100, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "cifar10": DatasetSpec("cifar10", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "digits": DatasetSpec("mmkd_digits", 10, (0.3059,) * 3, (0.3763,) * 3, offline=True),
}


def default_data_dir() -> str:
  return os.path.expanduser(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))


def get_spec(name: str, train_split: str = "", test_split: str = "") -> DatasetSpec:
  """The dataset's spec; non-empty ``train_split`` / ``test_split`` replace its splits (TFDS
  slicing, e.g. 'train[:85%]' and 'train[85%:]' for a validation split). A prefix slice of the
  training split keeps record positions, so augmentation and cached teacher outputs line up."""
  if name not in DATASETS:
    raise ValueError(f"Unknown dataset {name!r}. Known datasets: {', '.join(DATASETS)}.")
  spec = DATASETS[name]
  return dataclasses.replace(spec, train_split=train_split or spec.train_split,
                             test_split=test_split or spec.test_split)


def _builder(spec: DatasetSpec, data_dir: str) -> tfds.core.DatasetBuilder:
  if spec.tfds_name == "mmkd_digits":
    from mmkd_jax.data.digits import MmkdDigits  # pylint: disable=import-outside-toplevel
    return MmkdDigits(data_dir=data_dir, file_format="array_record")
  return tfds.builder(spec.tfds_name, data_dir=data_dir, file_format="array_record")


def prepare(name: str, data_dir: str | None = None, allow_download: bool = False) -> None:
  """Makes sure ``name`` is prepared as array_record under ``data_dir``.

  The offline datasets are prepared on first use. Others need a download, which happens only
  with ``allow_download`` (``python -m mmkd_jax.data.prepare``), never during a run.
  """
  spec = get_spec(name)
  data_dir = data_dir or default_data_dir()
  builder = _builder(spec, data_dir)
  if builder.is_prepared():
    return
  if spec.offline or allow_download:
    builder.download_and_prepare(file_format="array_record")
    return
  raise FileNotFoundError(
      f"dataset {name!r} is not prepared under {data_dir}. Prepare it once on a machine with "
      f"internet: `python -m mmkd_jax.data.prepare {name} --data_dir {data_dir}` (array_record "
      "format; TensorFlow is not needed), or point --config.data_dir at a prepared copy.")


def data_source(name: str, split: str, data_dir: str | None = None) -> Any:
  """A random-access source of ``{'image': uint8 HWC, 'label': int, ...}`` records."""
  spec = get_spec(name)
  data_dir = data_dir or default_data_dir()
  if spec.offline:
    prepare(name, data_dir)
    return _builder(spec, data_dir).as_data_source(split=split)
  try:
    return tfds.data_source(spec.tfds_name, split=split, data_dir=data_dir, download=False,
                            builder_kwargs={"file_format": "array_record"})
  except (NotImplementedError, AssertionError, FileNotFoundError) as e:
    # TFDS reports a missing offline dataset as a TFRECORD NotImplementedError; say what it is.
    raise FileNotFoundError(
        f"dataset {name!r} ({split}) could not be opened under {data_dir}: {e}. Prepare it once "
        f"with `python -m mmkd_jax.data.prepare {name} --data_dir {data_dir}`.") from e


def split_size(source: Any) -> int:
  return len(source)


def read_records(source: Any, indices: np.ndarray, spec: DatasetSpec) -> dict[str, np.ndarray]:
  """Reads records by index into ``{'image': (N, H, W, 3) uint8, 'label': (N,) int32}``."""
  keys = [int(i) for i in indices]
  try:
    records = source.__getitems__(keys)
  except (AttributeError, TypeError):  # tfds.testing.mock_data patches it with another signature
    records = [source[k] for k in keys]
  return {
      "image": np.stack([np.asarray(r[spec.image_key], np.uint8) for r in records]),
      "label": np.asarray([int(r[spec.label_key]) for r in records], np.int32),
  }
