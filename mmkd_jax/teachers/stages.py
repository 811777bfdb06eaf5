"""The configured teachers through a run: where their checkpoints live, training the missing
ones, loading them, and the precomputed-output cache (its key, writing and opening it).

Every function takes a resolved config (``mmkd_jax.config.validate``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
import zlib
from typing import Any

import jax
import ml_collections
import numpy as np

from mmkd_jax import config as config_lib
from mmkd_jax.runs import identity as run_identity
from mmkd_jax.runs import stop as stops
from mmkd_jax.training import parallel
from mmkd_jax.runs import progress
from mmkd_jax.runs import storage
from mmkd_jax.runs import lock as workdir_lock
from mmkd_jax.training import run as run_lib
from mmkd_jax.data import sources
from mmkd_jax.errors import ConfigError
from mmkd_jax.teachers import cache as cache_lib
from mmkd_jax.teachers import convert
from mmkd_jax.teachers.core import (TEACHER_META, Teacher, augmented_teacher_outputs, feature_shapes,
                                    is_complete, load_teacher, save_teacher)


def is_explicit(entry: ml_collections.ConfigDict) -> bool:
  """A finished teacher named by its path, used as it is (with ``checkpoint_head=reinit`` the path
  is only where its training starts)."""
  return bool(entry.checkpoint) and entry.get("checkpoint_head", "keep") == "keep"


def checkpoint_path(config: ml_collections.ConfigDict, entry: ml_collections.ConfigDict) -> str:
  """The teacher's explicit checkpoint, else ``<teacher_dir>/<dataset>[-<split>]_<name>``: trained
  ones are named by dataset and training split (when not the whole one), so validation-split
  teachers never stand in for full-split ones."""
  if is_explicit(entry):
    return entry.checkpoint
  split = "".join(ch if ch.isalnum() else "_" for ch in (entry.get("train_split") or config.train_split))
  dataset = storage.basename(config.dataset)
  dataset = f"{dataset}-{split.strip('_')}" if split else dataset
  return storage.join(config.teacher_dir, f"{dataset}_{entry.name}")


# What a trained teacher's parameters depend on besides its architecture and seed: the fields of
# its training config recorded in teacher.json and compared whenever the directory is reused, so a
# changed setting is never silently served by an old teacher.
IDENTITY_FIELDS = ("dataset", "train_split", "train_classes", "label_noise", "label_noise_seed", "normalization",
                   "image_size", "augmentation_seed", "batch_size", "epochs", "lr", "lr_milestones", "lr_decay",
                   "momentum", "nesterov", "weight_decay", "dtype", "sync_batch_norm", "batch_norm_groups",
                   "student_checkpoint", "checkpoint_head")
# Identity fields added later, as every teacher recorded before them was made.
_UNRECORDED = {"student_checkpoint": "", "checkpoint_head": "keep", "dataset_version": ""}


class StaleTeacherError(ConfigError):
  """A teacher directory holds a teacher trained with other settings than the config asks for."""


def teacher_view_seed(seed: int) -> int:
  """The augmentation seed of a teacher's own training views (``teacher_training.views=own``): a
  31-bit number derived from its seed, far from the small seeds students use, so a student's
  views and its teachers' training views are different crops and flips."""
  return zlib.crc32(f"mmkd_jax teacher views {seed}".encode()) & 0x7FFFFFFF


def training_config(config: ml_collections.ConfigDict, entry: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The resolved config that trains teacher ``entry``: the run's setting with method ``none``,
  the teacher's architecture and seed, and ``teacher_training``'s multistep SGD."""
  tc = copy.deepcopy(config)
  tc.unlock()
  tc.resolved_for, tc.replicas = "", ""
  tc.method, tc.student, tc.seed = "none", entry.arch, entry.seed
  if config.teacher_training.views == "own":
    tc.augmentation_seed = teacher_view_seed(entry.seed)
  tc.epochs = entry.get("epochs") or config.teacher_training.epochs
  tc.lr = entry.get("lr") or config.teacher_training.lr
  tc.lr_milestones, tc.stop_at_step = config.teacher_training.lr_milestones, -1
  # teachers train by the papers' rule whatever the student's (so it is no part of their identity)
  tc.schedule, tc.schedule_epochs, tc.warmup_epochs, tc.optimizer, tc.label_smoothing = "multistep", 0, 0.0, "sgd", 0.0
  # from a random start, or fine-tuned from the entry's checkpoint with a new classifier
  tc.student_checkpoint, tc.checkpoint_head = ((entry.checkpoint, "reinit") if entry.checkpoint and not is_explicit(entry)
                                               else ("", "keep"))
  tc.train_split = entry.get("train_split") or config.train_split
  tc.train_classes = tuple(entry.get("classes", ())) or tuple(config.train_classes)
  tc.label_noise = entry.get("label_noise") or config.label_noise
  _clear_method_fields(tc)
  return config_lib.resolve(tc)


def identity(config: ml_collections.ConfigDict, entry: ml_collections.ConfigDict,
             tc: ml_collections.ConfigDict | None = None) -> dict[str, Any]:
  """What produced teacher ``entry`` under ``config`` (compared on reuse); ``tc``: its
  ``training_config`` when the caller has it."""
  tc = tc if tc is not None else training_config(config, entry)
  fields = json.loads(tc.to_json_best_effort())
  return {"arch": entry.arch, "seed": entry.seed, **{k: fields[k] for k in IDENTITY_FIELDS},
          "dataset_version": sources.dataset_version(tc)}  # an image folder's contents


def identity_differences(recorded: dict[str, Any] | None, expected: dict[str, Any]) -> list[str]:
  recorded = {**_UNRECORDED, **(recorded or {})} if recorded else {}
  return [f"{k} {json.dumps(recorded[k]) if k in recorded else '(not recorded)'} -> {json.dumps(v)}"
          for k, v in expected.items() if k not in recorded or recorded[k] != v]


def check_identity(config: ml_collections.ConfigDict, index: int, path: str) -> None:
  """Refuses a finished teacher in ``path`` whose recorded settings differ from the config's."""
  entry = config.teachers[index]
  recorded = storage.read_json(storage.join(path, TEACHER_META)).get("identity")
  differences = identity_differences(recorded, identity(config, entry))
  if differences:
    raise StaleTeacherError(
        f"teacher {entry.name!r}: {storage.absolute(path)} was trained with other settings (recorded -> "
        f"this config): {'; '.join(differences)}. To train the new one beside it, give it another name "
        f"(--config.teachers[{index}].name={entry.name}_2) or another --config.teacher_dir; to use the "
        f"existing one as it is, name it explicitly: --config.teachers[{index}].checkpoint={storage.absolute(path)}"
        + (". Teachers trained before config.teacher_training.views trained on the students' views "
           "(--config.teacher_training.views=shared uses them)"
           if any(d.startswith("augmentation_seed ") for d in differences) else ""))


def _missing_checkpoint(entry: ml_collections.ConfigDict, index: int, path: str) -> FileNotFoundError:
  return FileNotFoundError(f"teacher {entry.name!r}: config.teachers[{index}].checkpoint = {path} does "
                           "not exist; fix the path (or leave it empty to train the teacher)")


def load_teachers(config: ml_collections.ConfigDict, spec: sources.DatasetSpec | None = None) -> list[Teacher]:
  """Every configured teacher, loaded; a missing one is an error naming its path and the fix,
  a trained one whose recorded settings differ from the config's is refused (StaleTeacherError)."""
  spec = spec or sources.dataset_spec(config)
  loaded = []
  for i, entry in enumerate(config.teachers):
    path = checkpoint_path(config, entry)
    if not storage.exists(path):
      if is_explicit(entry):
        raise _missing_checkpoint(entry, i, path)
      raise FileNotFoundError(f"teacher {entry.name!r}: {storage.absolute(path)} does not exist. Train it with "
                              "--config.mode=train_teacher (or mode=pipeline), or set "
                              f"config.teachers[{i}].checkpoint to its .pth / orbax directory")
    if not is_explicit(entry) and is_complete(path):
      check_identity(config, i, path)
    loaded.append(load_teacher(entry.name, entry.arch, spec.num_classes, path, spec.image_shape,
                               config.trust_pickle))
  return loaded


def check_trained_teachers(config: ml_collections.ConfigDict) -> None:
  """Refuses, before anything is trained, an explicit teacher checkpoint that does not exist or
  does not load (another architecture, pickled objects without ``trust_pickle``), and any finished
  teacher that the config would reuse but that was trained with other settings."""
  for i, entry in enumerate(config.teachers):
    path = checkpoint_path(config, entry)
    if entry.checkpoint and not storage.exists(entry.checkpoint):
      raise _missing_checkpoint(entry, i, entry.checkpoint)
    if not is_explicit(entry) and is_complete(path):
      check_identity(config, i, path)
    elif entry.checkpoint and not storage.is_dir(entry.checkpoint):  # a .pth / .npz: it must load
      spec = sources.dataset_spec(config)
      convert.check_pretrained(entry.arch, spec.num_classes, entry.checkpoint, spec.image_shape, config.trust_pickle,
                               entry.get("checkpoint_head", "keep"))


def train_missing_teachers(config: ml_collections.ConfigDict, stop: stops.StopRequest | None = None) -> float:
  """Trains, into ``teacher_dir``, every teacher without an explicit checkpoint that is missing;
  returns the seconds spent. A teacher with an explicit checkpoint is never trained (a mistyped
  path is an error later). A stop signal stops it with its latest checkpoint saved (stops.Preempted);
  the same command resumes it from there, and only a finished teacher gets its teacher.json."""
  check_trained_teachers(config)
  spent = 0.0
  missing = [e for e in config.teachers if not (is_explicit(e) or is_complete(checkpoint_path(config, e)))]
  for k, entry in enumerate(missing, start=1):
    path = checkpoint_path(config, entry)
    stops.raise_if_stopped(f"before training teacher {entry.name!r}")
    progress.stage(f"teacher {k}/{len(missing)}",
                   f"training {entry.name!r} ({entry.arch}) on {config.dataset} -> {storage.absolute(path)}")
    tc = training_config(config, entry)
    storage.makedirs(path + ".run")
    with workdir_lock.WorkdirLock(path + ".run"):  # the teacher's own run directory
      summary = run_lib.train_and_evaluate(tc, path + ".run", stop=stop)
    state = summary["state"]
    if summary["status"] != "finished":
      raise stops.stop(f"while training teacher {entry.name!r} at step {int(jax.device_get(state.step))} "
                      f"(of {summary['steps_total']}; checkpoint saved in {storage.absolute(path)}.run)")
    spent += summary["wall_seconds"]
    variables = {"params": state.params["student"], "batch_stats": state.model_state["student"]}
    spec = sources.dataset_spec(config)
    save_teacher(path, entry.arch, spec.num_classes, jax.device_get(variables),
                 {"dataset": config.dataset, "accuracy": summary["final_top1"], "eval_split": summary["eval_split"],
                  "epochs": tc.epochs, "seed": entry.seed, "name": entry.name, "image_shape": list(spec.image_shape),
                  "identity": identity(config, entry, tc), "train_seconds": summary["wall_seconds"],
                  "code_version": run_identity.code_version(), "devices": jax.device_count()})
    print(f"teacher {entry.name!r}: {summary['eval_split']} top-1 {summary['final_top1']:.2f}%", flush=True)
  return spent


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
      dataset="@".join(filter(None, (config.dataset, sources.dataset_version(config)))), split=spec.train_split,
      num_examples=len(dataset.train),
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
  return storage.join(config.teacher_dir, "cache", f"{storage.basename(config.dataset)}-{key}")


def precompute(config: ml_collections.ConfigDict, loaded: list[Teacher],
               dataset: sources.Dataset | None = None) -> str:
  """Writes this host's shard of the teacher cache unless it exists (then it is validated)."""
  dataset = dataset or sources.open_dataset(config)
  spec = cache_spec(config, loaded, dataset)
  directory = cache_dir(config, spec)
  if cache_lib.cache_exists(directory):
    cache_lib.TeacherCache(directory, spec)  # validates
    print(f"teacher cache already present: {storage.absolute(directory)}")
    return directory
  progress.stage("precompute", f"teacher outputs: {len(loaded)} teachers x {len(dataset.train)} images x "
                 f"{config.num_replays} replays -> {storage.absolute(directory)}")
  ds = dataset.spec
  variables = tuple(t.variables for t in loaded)
  forward = jax.jit(lambda v, images, index, replay: augmented_teacher_outputs(
      loaded, v, images, index, replay, config.augmentation_seed, ds, config.feature_layer))
  def producer(indices: np.ndarray, replay: int):
    stops.raise_if_stopped(f"while precomputing the teacher cache {storage.absolute(directory)} (an unfinished "
                          "shard is never marked finished)")
    view = (config.augmentation_seed, replay) if ds.host_transform else None
    images = sources.read_records(dataset.train, indices, ds, view)["image"]
    pad = (-len(indices)) % 32  # few shapes: one compilation for the full batches, one for the last
    images = np.concatenate([images, np.repeat(images[:1], pad, 0)]) if pad else images
    idx = np.concatenate([indices, np.repeat(indices[:1], pad)]) if pad else indices
    logits, feats = jax.device_get(forward(variables, images, idx.astype(np.int32), replay))
    n = len(indices)
    return logits[:n], tuple(f[:n] for f in feats)

  started = time.time()
  pi, pc = jax.process_index(), jax.process_count()
  per_host = cache_lib.shards_per_host(spec, pc)
  for shard in range(pi * per_host, (pi + 1) * per_host):
    if not cache_lib.shard_exists(directory, shard, pc * per_host):
      stops.raise_if_stopped("before precomputing the teacher cache")
      cache_lib.write_cache(directory, spec, producer, batch_size=256, shard=shard, num_shards=pc * per_host,
                            started=started)
  parallel.sync_hosts("teacher cache written")  # every host writes its shard; all wait until the cache is whole
  print(f"teacher cache written: {storage.absolute(directory)}")
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
