"""Command line entry point.

    python -m mmkd_jax.main --config configs/digits_mmkd.py --workdir runs/digits \\
        [--config.epochs=10 --config.method=aver ...]

``config.mode``: train_teacher (train the missing teachers), precompute (write the teacher
cache), distill (train the student), evaluate (test the best checkpoint), or pipeline (all of
them, skipping what already exists).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys

from absl import app, flags, logging
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np

from mmkd_jax import bilevel
from mmkd_jax import teachers as teachers_lib
from mmkd_jax import train
from mmkd_jax.data import sources, teacher_cache
from mmkd_jax.distill.methods import METHODS
from mmkd_jax.models import MODEL_NAMES

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the summary.")

MODES = ("train_teacher", "precompute", "distill", "evaluate", "pipeline")


class ConfigError(ValueError):
  """A config field is invalid; the message names it."""


def validate(config: ml_collections.ConfigDict) -> None:
  def need(cond, field, message):
    if not cond:
      raise ConfigError(f"config.{field}: {message}")
  need(config.mode in MODES, "mode", f"{config.mode!r} is not one of {', '.join(MODES)}")
  need(config.method in METHODS, "method", f"unknown method {config.method!r}; known: {', '.join(METHODS)}")
  need(config.dataset in sources.DATASETS, "dataset",
       f"unknown dataset {config.dataset!r}; known: {', '.join(sources.DATASETS)}")
  need(config.student in MODEL_NAMES, "student",
       f"unknown model {config.student!r}; known: {', '.join(MODEL_NAMES)}")
  names = [t.name for t in config.teachers]
  need(len(set(names)) == len(names), "teachers", f"teacher names must be unique, got {names}")
  for i, t in enumerate(config.teachers):
    need(t.arch in MODEL_NAMES, f"teachers[{i}].arch",
         f"unknown model {t.arch!r}; known: {', '.join(MODEL_NAMES)}")
  need(config.teacher_source in ("precomputed", "online"), "teacher_source",
       f"{config.teacher_source!r} must be 'precomputed' or 'online'")
  need(config.cache_dtype in teacher_cache.STORAGE_DTYPES, "cache_dtype",
       f"{config.cache_dtype!r} must be one of {', '.join(teacher_cache.STORAGE_DTYPES)}")
  need(config.num_replays >= 1, "num_replays", "must be at least 1")
  need(config.batch_size > 0 and config.eval_batch_size > 0, "batch_size", "must be positive")
  need(config.meta.freq >= 1, "meta.freq", "must be at least 1")
  need(config.meta.hypergradient in bilevel.MODES, "meta.hypergradient",
       f"{config.meta.hypergradient!r} is not one of {', '.join(bilevel.MODES)}")
  need(config.kd.temperature > 0, "kd.temperature", "must be positive")
  needs_teachers = config.method != "none"
  if config.mode in ("distill", "pipeline", "precompute") and needs_teachers:
    need(len(config.teachers) >= 1, "teachers", f"method {config.method!r} needs at least one teacher")
  if config.method == "mmkd" and config.meta.hard_buffer:
    need(config.meta.buffer_size % config.batch_size == 0, "meta.buffer_size",
         f"{config.meta.buffer_size} must be a multiple of batch_size {config.batch_size} (the "
         "buffer must fill up exactly; the reference's buffer never fills otherwise)")
  need(-2 <= config.feature_layer <= 3 and config.feature_layer != -1, "feature_layer",
       f"{config.feature_layer} is not a feature map index of the zoo models (0..3, or -2 for the "
       "last map before pooling)")


def teacher_checkpoint(config: ml_collections.ConfigDict, entry: ml_collections.ConfigDict) -> str:
  """The teacher's checkpoint; trained ones are named by dataset (and training split, when it is
  not the whole one, so that validation-split teachers never stand in for full-split ones)."""
  if entry.checkpoint:
    return entry.checkpoint
  split = "".join(ch if ch.isalnum() else "_" for ch in config.train_split)
  dataset = f"{config.dataset}-{split.strip('_')}" if split else config.dataset
  return os.path.join(config.teacher_dir, f"{dataset}_{entry.name}")


def load_teachers(config: ml_collections.ConfigDict) -> list[teachers_lib.Teacher]:
  num_classes = sources.get_spec(config.dataset).num_classes
  loaded = []
  for entry in config.teachers:
    path = teacher_checkpoint(config, entry)
    if not os.path.exists(path):
      raise FileNotFoundError(f"teacher {entry.name!r}: {path} does not exist. Train it with "
                              "--config.mode=train_teacher (or mode=pipeline), or set "
                              f"config.teachers[...].checkpoint to its .pth / orbax directory")
    loaded.append(teachers_lib.load_teacher(entry.name, entry.arch, num_classes, path, config.trust_pickle))
  return loaded


def train_missing_teachers(config: ml_collections.ConfigDict) -> None:
  for entry in config.teachers:
    path = teacher_checkpoint(config, entry)
    if os.path.exists(path) and (not os.path.isdir(path) or teachers_lib.is_complete(path)):
      continue
    print(f"training teacher {entry.name!r} ({entry.arch}) on {config.dataset} -> {path}")
    tc = copy.deepcopy(config).unlock()
    tc.method = "none"
    tc.seed = entry.seed
    tc.epochs = config.teacher_training.epochs
    tc.lr = config.teacher_training.lr
    tc.lr_milestones = config.teacher_training.lr_milestones
    tc.stop_at_step = -1
    summary = train.train_and_evaluate(tc, path + ".run", student_arch=entry.arch)
    state = summary["state"]
    variables = {"params": state.params["student"], "batch_stats": state.model_state["student"]}
    teachers_lib.save_teacher(path, entry.arch, sources.get_spec(config.dataset).num_classes,
                              jax.device_get(variables),
                              {"dataset": config.dataset, "accuracy": summary["final_top1"],
                               "epochs": tc.epochs, "seed": entry.seed, "name": entry.name})
    print(f"teacher {entry.name!r}: test top-1 {summary['final_top1']:.2f}%")


def cache_spec(config: ml_collections.ConfigDict, loaded: list[teachers_lib.Teacher]) -> teacher_cache.CacheSpec:
  spec = train.dataset_spec(config)
  source = sources.data_source(config.dataset, spec.train_split, config.data_dir or None)
  return teacher_cache.CacheSpec(
      teacher_names=tuple(t.name for t in loaded),
      teacher_fingerprints=tuple(t.fingerprint for t in loaded),
      dataset=config.dataset, split=spec.train_split, num_examples=len(source),
      augmentation_seed=config.augmentation_seed, num_replays=config.num_replays,
      feature_layer=f"feat[{config.feature_layer}]", num_classes=spec.num_classes,
      feature_shapes=tuple(tuple(s) for s in teachers_lib.feature_shapes(loaded, spec.image_size,
                                                                         config.feature_layer)),
      dtype=config.cache_dtype)


def cache_dir(config: ml_collections.ConfigDict, spec: teacher_cache.CacheSpec) -> str:
  if config.cache_dir:
    return config.cache_dir
  key = hashlib.sha256(json.dumps(spec.to_json(), sort_keys=True).encode()).hexdigest()[:12]
  return os.path.join(config.teacher_dir, "cache", f"{config.dataset}-{key}")


def precompute(config: ml_collections.ConfigDict, loaded: list[teachers_lib.Teacher]) -> str:
  spec = cache_spec(config, loaded)
  directory = cache_dir(config, spec)
  if teacher_cache.cache_exists(directory):
    teacher_cache.TeacherCache(directory, spec)  # validates
    print(f"teacher cache already present: {directory}")
    return directory
  ds = train.dataset_spec(config)
  source = sources.data_source(config.dataset, ds.train_split, config.data_dir or None)
  variables = tuple(t.variables for t in loaded)
  forward = jax.jit(lambda v, images, index, replay: teachers_lib.augmented_teacher_outputs(
      loaded, v, images, index, replay, config.augmentation_seed, ds.mean, ds.std, config.feature_layer))

  def producer(indices: np.ndarray, replay: int):
    images = sources.read_records(source, indices, ds)["image"]
    pad = (-len(indices)) % 32  # fixed shapes: one compilation for every batch
    images = np.concatenate([images, np.repeat(images[:1], pad, 0)]) if pad else images
    idx = np.concatenate([indices, np.repeat(indices[:1], pad)]) if pad else indices
    logits, feats = jax.device_get(forward(variables, images, idx.astype(np.int32), replay))
    n = len(indices)
    return logits[:n], tuple(f[:n] for f in feats)

  pi, pc = jax.process_index(), jax.process_count()
  if not teacher_cache.shard_exists(directory, pi, pc):
    teacher_cache.write_cache(directory, spec, producer, batch_size=256, shard=pi, num_shards=pc)
  if pc > 1:  # every host writes its shard; all wait until the cache is whole
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices("mmkd_jax teacher cache written")
  print(f"teacher cache written: {directory}")
  return directory


def open_cache(config: ml_collections.ConfigDict, loaded: list[teachers_lib.Teacher]):
  if config.teacher_source != "precomputed" or config.method == "none":
    return None
  spec = cache_spec(config, loaded)
  directory = cache_dir(config, spec)
  if not teacher_cache.cache_exists(directory):
    raise FileNotFoundError(f"no teacher cache in {directory}: run --config.mode=precompute (or "
                            "mode=pipeline) first, or use --config.teacher_source=online")
  return teacher_cache.TeacherCache(directory, spec)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  validate(config)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  if config.mode in ("train_teacher", "pipeline"):
    train_missing_teachers(config)
    if config.mode == "train_teacher":
      return {}
  loaded = load_teachers(config) if config.method != "none" else []
  if config.mode == "precompute" or (config.mode == "pipeline" and config.teacher_source == "precomputed"
                                     and loaded):
    precompute(config, loaded)
    if config.mode == "precompute":
      return {}
  if config.mode == "evaluate":
    return evaluate_checkpoint(config, workdir, loaded)
  summary = train.train_and_evaluate(config, workdir, loaded, open_cache(config, loaded))
  summary.pop("state", None)
  print(json.dumps({k: v for k, v in summary.items() if k != "teachers"}, indent=2))
  return summary


def evaluate_checkpoint(config, workdir, loaded) -> dict:
  from mmkd_jax import checkpoint, parallel  # pylint: disable=import-outside-toplevel
  setup = train.build(config, loaded, None if config.teacher_source == "online" else open_cache(config, loaded))
  state = train.init_state(setup, train.example_batch(setup))
  ckpts = checkpoint.Checkpoints(workdir, config.keep_checkpoints, async_save=False)
  restored = ckpts.restore(state, "best") or ckpts.restore(state, "latest")
  if restored is None:
    raise FileNotFoundError(f"no checkpoint in {workdir} to evaluate")
  state, _, step = restored
  result = train.evaluate(setup, parallel.replicate(state, setup.mesh), jax.jit(setup.steps.eval_step))
  print(f"checkpoint step {step}: test top-1 {result['top1']:.2f}%, top-5 {result['top5']:.2f}%, "
        f"loss {result['loss']:.4f}")
  return result


def initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """``jax.distributed.initialize`` from the config (or flags), else auto-detection.

  Explicit: ``--config.distributed.coordinator_address=host:port``, ``num_processes``,
  ``process_id``. Auto (``distributed.auto``): on TPU pod slices, SLURM jobs with several tasks,
  or when ``JAX_COORDINATOR_ADDRESS`` is set, JAX detects the cluster itself.
  """
  d = config.distributed
  if d.coordinator_address:
    jax.distributed.initialize(coordinator_address=d.coordinator_address, num_processes=d.num_processes,
                               process_id=d.process_id)
  elif d.auto and (os.environ.get("JAX_COORDINATOR_ADDRESS") or int(os.environ.get("SLURM_NTASKS", "1")) > 1
                   or os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0):
    jax.distributed.initialize()


def main(argv) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO
  if _WORKDIR.value is None:
    raise app.UsageError("--workdir is required")
  initialize_distributed(_CONFIG.value)
  if jax.process_index() != 0:
    logging.set_verbosity(logging.ERROR)
  try:
    run(_CONFIG.value, _WORKDIR.value)
  except (train.NonFiniteLossError, ConfigError, teacher_cache.CacheMismatchError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
