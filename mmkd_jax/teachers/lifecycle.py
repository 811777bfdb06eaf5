"""The configured teachers through a run: where their checkpoints live, training the missing
ones, loading them, and the precomputed-output cache (its key, writing and opening it).

Every function takes a resolved config (``mmkd_jax.config.validate``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os

import jax
import ml_collections
import numpy as np

from mmkd_jax.data import sources
from mmkd_jax.teachers import cache as cache_lib
from mmkd_jax.teachers.core import (Teacher, augmented_teacher_outputs, feature_shapes, is_complete,
                                    load_teacher, save_teacher)


def checkpoint_path(config: ml_collections.ConfigDict, entry: ml_collections.ConfigDict) -> str:
  """The teacher's explicit checkpoint, else ``<teacher_dir>/<dataset>[-<split>]_<name>``: trained
  ones are named by dataset and training split (when not the whole one), so validation-split
  teachers never stand in for full-split ones."""
  if entry.checkpoint:
    return entry.checkpoint
  split = "".join(ch if ch.isalnum() else "_" for ch in config.train_split)
  dataset = os.path.basename(os.path.normpath(config.dataset))
  dataset = f"{dataset}-{split.strip('_')}" if split else dataset
  return os.path.join(config.teacher_dir, f"{dataset}_{entry.name}")


def load_teachers(config: ml_collections.ConfigDict, spec: sources.DatasetSpec | None = None) -> list[Teacher]:
  """Every configured teacher, loaded; a missing one is an error naming its path and the fix."""
  spec = spec or sources.dataset_spec(config)
  loaded = []
  for i, entry in enumerate(config.teachers):
    path = checkpoint_path(config, entry)
    if not os.path.exists(path):
      if entry.checkpoint:
        raise FileNotFoundError(f"teacher {entry.name!r}: config.teachers[{i}].checkpoint = {path} does "
                                "not exist; fix the path (or leave it empty to train the teacher)")
      raise FileNotFoundError(f"teacher {entry.name!r}: {path} does not exist. Train it with "
                              "--config.mode=train_teacher (or mode=pipeline), or set "
                              f"config.teachers[{i}].checkpoint to its .pth / orbax directory")
    loaded.append(load_teacher(entry.name, entry.arch, spec.num_classes, path, spec.image_shape,
                               config.trust_pickle))
  return loaded


def train_missing_teachers(config: ml_collections.ConfigDict) -> None:
  """Trains, into ``teacher_dir``, every teacher without an explicit checkpoint that is missing.
  A teacher with an explicit checkpoint is never trained (a mistyped path is an error later)."""
  from mmkd_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  from mmkd_jax import train  # pylint: disable=import-outside-toplevel
  for entry in config.teachers:
    path = checkpoint_path(config, entry)
    if entry.checkpoint or (os.path.isdir(path) and is_complete(path)):
      continue
    print(f"training teacher {entry.name!r} ({entry.arch}) on {config.dataset} -> {path}")
    tc = copy.deepcopy(config)
    tc.unlock()
    tc.resolved_for = ""
    tc.method, tc.student, tc.seed = "none", entry.arch, entry.seed
    tc.epochs, tc.lr = config.teacher_training.epochs, config.teacher_training.lr
    tc.lr_milestones, tc.stop_at_step = config.teacher_training.lr_milestones, -1
    _clear_method_fields(tc)
    tc = config_lib.resolve(tc)
    summary = train.train_and_evaluate(tc, path + ".run")
    state = summary["state"]
    variables = {"params": state.params["student"], "batch_stats": state.model_state["student"]}
    spec = sources.dataset_spec(config)
    save_teacher(path, entry.arch, spec.num_classes, jax.device_get(variables),
                 {"dataset": config.dataset, "accuracy": summary["final_top1"], "epochs": tc.epochs,
                  "seed": entry.seed, "name": entry.name, "image_shape": list(spec.image_shape)})
    print(f"teacher {entry.name!r}: test top-1 {summary['final_top1']:.2f}%")


def _clear_method_fields(c: ml_collections.ConfigDict) -> None:
  """Unsets what resolve() filled for the student's method, so 'none' gets its own values."""
  c.feature_layer = None
  c.temperature = None
  for section in (c.weights, c.meta.lookahead_weights):
    for k in section:
      section[k] = None


def cache_spec(config: ml_collections.ConfigDict, loaded: list[Teacher], dataset: sources.Dataset
               ) -> cache_lib.CacheSpec:
  spec = dataset.spec
  return cache_lib.CacheSpec(
      teacher_names=tuple(t.name for t in loaded),
      teacher_fingerprints=tuple(t.fingerprint for t in loaded),
      dataset=config.dataset, split=spec.train_split, num_examples=len(dataset.train),
      augmentation_seed=config.augmentation_seed, num_replays=config.num_replays,
      feature_layer=f"feat[{config.feature_layer}]", num_classes=spec.num_classes,
      feature_shapes=tuple(tuple(s) for s in feature_shapes(loaded, spec.image_shape, config.feature_layer)),
      dtype=config.cache_dtype, augmentation=cache_lib.augmentation_name(spec.crop_padding, spec.flip, spec.host_transform),
      logits_dtype=config.cache_logits_dtype)


def cache_dir(config: ml_collections.ConfigDict, spec: cache_lib.CacheSpec) -> str:
  """``config.cache_dir``, else a directory under ``teacher_dir`` keyed by everything it holds."""
  if config.cache_dir:
    return config.cache_dir
  key = hashlib.sha256(json.dumps(spec.identity(), sort_keys=True).encode()).hexdigest()[:12]
  return os.path.join(config.teacher_dir, "cache", f"{os.path.basename(os.path.normpath(config.dataset))}-{key}")


def precompute(config: ml_collections.ConfigDict, loaded: list[Teacher],
               dataset: sources.Dataset | None = None) -> str:
  """Writes this host's shard of the teacher cache unless it exists (then it is validated)."""
  dataset = dataset or sources.open_dataset(config)
  spec = cache_spec(config, loaded, dataset)
  directory = cache_dir(config, spec)
  if cache_lib.cache_exists(directory):
    cache_lib.TeacherCache(directory, spec)  # validates
    print(f"teacher cache already present: {directory}")
    return directory
  ds = dataset.spec
  variables = tuple(t.variables for t in loaded)
  forward = jax.jit(lambda v, images, index, replay: augmented_teacher_outputs(
      loaded, v, images, index, replay, config.augmentation_seed, ds, config.feature_layer))
  def producer(indices: np.ndarray, replay: int):
    view = (config.augmentation_seed, replay) if ds.host_transform else None
    images = sources.read_records(dataset.train, indices, ds, view)["image"]
    pad = (-len(indices)) % 32  # few shapes: one compilation for the full batches, one for the last
    images = np.concatenate([images, np.repeat(images[:1], pad, 0)]) if pad else images
    idx = np.concatenate([indices, np.repeat(indices[:1], pad)]) if pad else indices
    logits, feats = jax.device_get(forward(variables, images, idx.astype(np.int32), replay))
    n = len(indices)
    return logits[:n], tuple(f[:n] for f in feats)

  pi, pc = jax.process_index(), jax.process_count()
  per_host = cache_lib.shards_per_host(spec, pc)
  for shard in range(pi * per_host, (pi + 1) * per_host):
    if not cache_lib.shard_exists(directory, shard, pc * per_host):
      cache_lib.write_cache(directory, spec, producer, batch_size=256, shard=shard, num_shards=pc * per_host)
  if pc > 1:  # every host writes its shard; all wait until the cache is whole
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices("mmkd_jax teacher cache written")
  print(f"teacher cache written: {directory}")
  return directory


def open_cache(config: ml_collections.ConfigDict, loaded: list[Teacher],
               dataset: sources.Dataset | None = None) -> cache_lib.TeacherCache | None:
  """The run's teacher cache (None when teachers run online or there are none)."""
  if config.teacher_source != "precomputed" or not loaded:
    return None
  dataset = dataset or sources.open_dataset(config)
  spec = cache_spec(config, loaded, dataset)
  directory = cache_dir(config, spec)
  if not cache_lib.cache_exists(directory):
    raise FileNotFoundError(f"no teacher cache in {directory}: run --config.mode=precompute (or "
                            "mode=pipeline) first, or use --config.teacher_source=online")
  return cache_lib.TeacherCache(directory, spec)
