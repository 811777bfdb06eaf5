"""Precomputed teacher outputs as a TFDS dataset (array_record), keyed by (index, replay).

``write_cache`` runs the frozen teachers over ``num_replays`` augmented views of the training
split and stores, per (example index, replay), every teacher's logits and feat[-2] map in a
compact dtype (logits in float32 by default, feature maps in bfloat16; bfloat16 is stored as its uint16 bit pattern, since TFDS has no bfloat16
feature without TensorFlow). Record ``replay * N + index`` holds that pair. The metadata
(teacher names and parameter fingerprints, dataset, split, augmentation seed, replays,
feature layer, dtype) is part of the dataset; ``open_cache`` refuses a cache whose metadata
differs from the run's, naming the fields, and a truncated one.

TFDS writes into an ``incomplete.*`` directory and renames it only when every split is
finished, so an interrupted precompute leaves nothing a later run would accept.

Multi-host: the cache is written in shards, shard s of S holding the examples
``[s N / S, (s+1) N / S)`` for every replay, each host writing its own; a reader needs all
shards (any host count can read any shard count).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Iterator

import ml_dtypes
import numpy as np
import tensorflow_datasets as tfds

from mmkd_jax.runs import progress
from mmkd_jax.runs import storage
from mmkd_jax.data.tfds_prepare import prepare_quietly

CACHE_META_FILE = "mmkd_teacher_cache.json"
STORAGE_DTYPES = {"bfloat16": np.uint16, "float16": np.float16, "float32": np.float32}


class CacheMismatchError(ValueError):
  """The cache on disk was built for another run."""


# CacheSpec fields that say how a cache is stored, not what it holds.
STORAGE_FIELDS = ("record_encoding",)
# What each shard's metadata adds to its CacheSpec.
SHARD_FIELDS = ("shard", "num_shards", "index_range", "seconds")


@dataclasses.dataclass(frozen=True)
class CacheSpec:
  """What a cache was built for; every field must match the run that reads it."""
  teacher_names: tuple[str, ...]
  teacher_fingerprints: tuple[str, ...]
  dataset: str
  split: str
  num_examples: int
  augmentation_seed: int
  num_replays: int
  feature_layer: str
  num_classes: int
  feature_shapes: tuple[tuple[int, ...], ...]
  dtype: str = "bfloat16"               # feature maps
  augmentation: str = "pad4+crop+flip"  # the dataset's augmentation (``augmentation_name``)
  logits_dtype: str = "float32"         # logits: small, and the KD loss is sensitive to them
  # How arrays sit in a record: "bytes" (one raw string each; parses 10x faster) or "int64" (TFDS's
  # default for integer tensors, caches written before this field). Storage, not identity: it is
  # left out of the cache's key and of the mismatch check, and a reader follows the cache's own.
  record_encoding: str = "bytes"

  def identity(self) -> dict[str, Any]:
    """What the cache holds (its directory key and what a reader must match)."""
    return {k: v for k, v in self.to_json().items() if k not in STORAGE_FIELDS}

  def to_json(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["teacher_names"] = list(self.teacher_names)
    d["teacher_fingerprints"] = list(self.teacher_fingerprints)
    d["feature_shapes"] = [list(s) for s in self.feature_shapes]
    return d

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> "CacheSpec":
    d = dict(d)
    d["teacher_names"] = tuple(d["teacher_names"])
    d["teacher_fingerprints"] = tuple(d["teacher_fingerprints"])
    d["feature_shapes"] = tuple(tuple(s) for s in d["feature_shapes"])
    d.setdefault("record_encoding", "int64")
    return cls(**d)


def augmentation_name(crop_padding: int, flip: bool, host_transform: bool = False) -> str:
  if host_transform:
    return "random_resized_crop+flip"
  return f"pad{crop_padding}+crop" + ("+flip" if flip else "")


def to_storage(x: np.ndarray, dtype: str) -> np.ndarray:
  if dtype == "bfloat16":
    return np.asarray(x, ml_dtypes.bfloat16).view(np.uint16)
  return np.asarray(x, STORAGE_DTYPES[dtype])


def in_memory(x: np.ndarray, dtype: str) -> np.ndarray:
  """A stored array as an array of its dtype (bfloat16 from its uint16 bit pattern), not widened."""
  if dtype == "bfloat16":
    return np.asarray(x, np.uint16).view(ml_dtypes.bfloat16)
  return np.asarray(x, STORAGE_DTYPES[dtype])


def from_storage(x: np.ndarray, dtype: str) -> np.ndarray:
  return np.asarray(in_memory(x, dtype), np.float32)


# Produces (logits (b, T, C), tuple of T maps (b, H, W, C)) for example indices at a replay.
Producer = Callable[[np.ndarray, int], tuple[np.ndarray, tuple[np.ndarray, ...]]]


class TeacherOutputs(tfds.core.GeneratorBasedBuilder):
  """Teacher logits and feature maps per (example index, augmentation replay)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def __init__(self, *, spec: CacheSpec, producer: Producer | None = None, batch_size: int = 256,
               index_range: tuple[int, int] | None = None, **kwargs):
    self._spec = spec
    self._producer = producer
    self._batch_size = batch_size
    self._range = index_range or (0, spec.num_examples)
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    storage = STORAGE_DTYPES[self._spec.dtype]
    t, c = len(self._spec.teacher_names), self._spec.num_classes
    encoding = {"bytes": tfds.features.Encoding.BYTES, "int64": tfds.features.Encoding.NONE}[self._spec.record_encoding]
    features = {"index": np.int64, "replay": np.int64,
                "logits": tfds.features.Tensor(shape=(t, c), dtype=STORAGE_DTYPES[self._spec.logits_dtype],
                                               encoding=encoding)}
    for i, shape in enumerate(self._spec.feature_shapes):
      features[f"feat_{i}"] = tfds.features.Tensor(shape=tuple(shape), dtype=storage, encoding=encoding)
    return tfds.core.DatasetInfo(builder=self, description=__doc__,
                                 features=tfds.features.FeaturesDict(features),
                                 disable_shuffling=True,
                                 metadata=tfds.core.MetadataDict(mmkd=self._spec.to_json()))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self) -> Iterator[tuple[int, dict[str, Any]]]:
    spec = self._spec
    first, end = self._range
    n = end - first
    total = n * spec.num_replays
    bar = progress.StepBar(total, 0, "precompute teacher outputs", quiet=False)
    start = time.perf_counter()
    for replay in range(spec.num_replays):
      for lo in range(first, end, self._batch_size):
        indices = np.arange(lo, min(lo + self._batch_size, end))
        logits, feats = self._producer(indices, replay)
        logits = to_storage(logits, spec.logits_dtype)
        feats = [to_storage(f, spec.dtype) for f in feats]
        for j, i in enumerate(indices):
          example = {"index": int(i), "replay": replay, "logits": logits[j]}
          example.update({f"feat_{t}": feats[t][j] for t in range(len(feats))})
          yield replay * n + int(i) - first, example
        bar.advance(len(indices))
    elapsed = time.perf_counter() - start
    bar.close()
    print(f"precompute: {total} examples x {len(spec.teacher_names)} teachers in {elapsed:.1f} s "
          f"({total / max(elapsed, 1e-9):.0f} examples/s)")


# TFDS's writer buffers a split in memory and spills to disk through TensorFlow beyond 1 GB
# (tensorflow_datasets/core/shuffle.py): shards stay below this, so no TensorFlow is needed.
MAX_SHARD_BYTES = 800 << 20


def example_bytes(spec: CacheSpec) -> int:
  """Bytes of one (example, replay) record (raw arrays; the file adds a little)."""
  logits = len(spec.teacher_names) * spec.num_classes * np.dtype(STORAGE_DTYPES[spec.logits_dtype]).itemsize
  feats = sum(int(np.prod(s)) for s in spec.feature_shapes) * np.dtype(STORAGE_DTYPES[spec.dtype]).itemsize
  return logits + feats


def shards_per_host(spec: CacheSpec, num_hosts: int = 1) -> int:
  """How many shards each host writes so that none exceeds ``MAX_SHARD_BYTES``."""
  per_host = example_bytes(spec) * spec.num_replays * -(-spec.num_examples // num_hosts)
  return max(1, -(-per_host // MAX_SHARD_BYTES))


def shard_range(num_examples: int, shard: int, num_shards: int) -> tuple[int, int]:
  return shard * num_examples // num_shards, (shard + 1) * num_examples // num_shards


def _shard_dir(cache_dir: str, shard: int, num_shards: int) -> str:
  return storage.join(cache_dir, f"shard{shard:03d}of{num_shards:03d}")


def _version_dir(shard_dir: str) -> str:
  return storage.join(shard_dir, "teacher_outputs", str(TeacherOutputs.VERSION))


def _shard_dirs(cache_dir: str) -> list[str]:
  return [storage.join(cache_dir, d) for d in storage.listdir(cache_dir) if d.startswith("shard")]


def write_cache(cache_dir: str, spec: CacheSpec, producer: Producer, batch_size: int = 256,
                shard: int = 0, num_shards: int = 1, started: float | None = None) -> None:
  """Builds shard ``shard`` of ``num_shards`` of the cache (refuses to overwrite an existing one);
  its metadata records the seconds since ``started`` (default: this call). On an object store the
  shard is built on local disk and uploaded (array_record writes local files only)."""
  started = time.time() if started is None else started
  directory = _shard_dir(cache_dir, shard, num_shards)
  if storage.exists(storage.join(_version_dir(directory), CACHE_META_FILE)):
    raise FileExistsError(f"a teacher cache already exists in {directory}; remove it or choose "
                          "another cache_dir")
  index_range = shard_range(spec.num_examples, shard, num_shards)
  with storage.staged(directory, last=(CACHE_META_FILE,)) as local:
    builder = TeacherOutputs(spec=spec, producer=producer, batch_size=batch_size, index_range=index_range,
                             data_dir=local, file_format="array_record")
    prepare_quietly(builder)
    # The marker is written after TFDS's atomic rename (and uploaded last): a shard without it
    # is not accepted.
    storage.write_json(storage.join(_version_dir(local), CACHE_META_FILE),
                       dict(spec.to_json(), shard=shard, num_shards=num_shards, index_range=list(index_range),
                            seconds=round(time.time() - started, 3)))


def _complete_shards(cache_dir: str) -> list[tuple[str, dict[str, Any]]]:
  shards = []
  for directory in _shard_dirs(cache_dir):
    marker = storage.join(_version_dir(directory), CACHE_META_FILE)
    if storage.is_file(marker):
      shards.append((directory, storage.read_json(marker)))
  return shards


def shard_exists(cache_dir: str, shard: int, num_shards: int) -> bool:
  return storage.is_file(storage.join(_version_dir(_shard_dir(cache_dir, shard, num_shards)), CACHE_META_FILE))


def cache_exists(cache_dir: str) -> bool:
  shards = _complete_shards(cache_dir)
  return bool(shards) and len(shards) == shards[0][1]["num_shards"]


def shard_spec(meta: dict[str, Any]) -> CacheSpec:
  """The CacheSpec a shard's metadata file records."""
  return CacheSpec.from_json({k: v for k, v in meta.items() if k not in SHARD_FIELDS})


def describe_mismatch(found: CacheSpec, expected: CacheSpec) -> list[str]:
  return [f"{f.name}: cache has {getattr(found, f.name)!r}, this run needs {getattr(expected, f.name)!r}"
          for f in dataclasses.fields(CacheSpec)
          if f.name not in STORAGE_FIELDS and getattr(found, f.name) != getattr(expected, f.name)]


class TeacherCache:
  """Random-access reader joined to image batches by (index, replay = epoch % num_replays)."""

  def __init__(self, cache_dir: str, expected: CacheSpec):
    if not cache_exists(cache_dir):
      raise FileNotFoundError(f"no complete teacher cache in {cache_dir} (an interrupted precompute "
                              "leaves none, and every host's shard must be there); run mode=precompute")
    self._shards = []
    self.seconds = 0.0  # wall time its precompute took (the slowest shard), 0 when not recorded
    for directory, meta in _complete_shards(cache_dir):
      self.seconds = max(self.seconds, float(meta.get("seconds", 0.0)))
      found = shard_spec(meta)
      problems = describe_mismatch(found, expected)
      if problems:
        raise CacheMismatchError(f"the teacher cache in {cache_dir} was built for another run: "
                                 + "; ".join(problems) + ". Re-run mode=precompute with this config "
                                 "(into a new cache_dir) or fix the config.")
      start, end = meta["index_range"]
      source = TeacherOutputs(spec=found, data_dir=directory, index_range=(start, end),
                              file_format="array_record").as_data_source(split="train")
      expected_records = (end - start) * found.num_replays
      if len(source) != expected_records:
        raise CacheMismatchError(f"the teacher cache in {directory} is truncated: {len(source)} "
                                 f"records, expected {expected_records} ({end - start} examples "
                                 f"x {found.num_replays} replays); re-run mode=precompute")
      self._shards.append((start, end, source))
    self.spec = found
    self._starts = np.array([s[0] for s in self._shards])

  def _read(self, indices: np.ndarray, replay: int) -> list[dict[str, Any]]:
    which = np.searchsorted(self._starts, indices, side="right") - 1
    records: list[Any] = [None] * len(indices)
    for s in np.unique(which):
      start, end, source = self._shards[s]
      positions = np.flatnonzero(which == s)
      keys = [int(replay * (end - start) + indices[p] - start) for p in positions]
      for p, r in zip(positions, source.__getitems__(keys)):
        records[p] = r
    return records

  def _records(self, indices: np.ndarray, replay: int) -> list[dict[str, Any]]:
    records = self._read(np.asarray(indices), replay)
    for r, i in zip(records, indices):
      if int(r["index"]) != int(i) or int(r["replay"]) != replay:
        raise CacheMismatchError(f"teacher cache record for index {i} replay {replay} holds index "
                                 f"{r['index']} replay {r['replay']}: the cache is corrupt")
    return records

  def _stacked(self, records: list[dict[str, Any]], convert: Callable[[np.ndarray, str], np.ndarray]) -> dict[str, Any]:
    return {"teacher_logits": convert(np.stack([r["logits"] for r in records]), self.spec.logits_dtype),
            "teacher_feat": tuple(convert(np.stack([r[f"feat_{t}"] for r in records]), self.spec.dtype)
                                  for t in range(len(self.spec.teacher_names)))}

  def lookup(self, indices: np.ndarray, epoch: int) -> dict[str, Any]:
    replay = epoch % self.spec.num_replays
    return {**self._stacked(self._records(indices, replay), from_storage),
            "replay": np.full(len(indices), replay, np.int32)}

  def replay_arrays(self, replay: int, chunk: int = 4096) -> dict[str, Any]:
    """Every example's outputs at ``replay``, read in bulk and kept in their stored dtype
    (bfloat16 as bfloat16; ``astype(float32)`` then equals ``lookup``): what device-resident
    training holds (``mmkd_jax.data.resident``)."""
    n = self.spec.num_examples
    parts = [self._stacked(self._records(np.arange(lo, min(lo + chunk, n)), replay), in_memory)
             for lo in range(0, n, chunk)]
    return {"teacher_logits": np.concatenate([p["teacher_logits"] for p in parts]),
            "teacher_feat": tuple(np.concatenate([p["teacher_feat"][t] for p in parts])
                                  for t in range(len(self.spec.teacher_names)))}
