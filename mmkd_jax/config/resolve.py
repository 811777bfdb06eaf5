"""Resolving and validating a config, once per command: every field a method owns set from its
presets or defaults (``resolve``), then every check that names the field (``validate``) against
the registries and choices of the components (models, methods, optimisers, evaluators, datasets,
placements, cache dtypes). A replica's config is resolved once too (``member_configs``).

``resolve`` fills each unset method-owned field from the method's preset for the dataset, else
its default, so ``--config.method=X`` on any config gets X's settings, and an explicit value
(config file or ``--config.<field>=...``) always wins.
"""

from __future__ import annotations

import copy
from typing import Any

import ml_collections
from ml_collections import config_dict

from mmkd_jax import methods, registry
from mmkd_jax.methods import bilevel
from mmkd_jax.config.base import ADAPTER_INITS, FAITHFUL, MODES, TEACHER_VIEWS
from mmkd_jax.config.fields import get_field, placeholders, set_fields
from mmkd_jax.config.replicas import REPLICA_LOOPS, check_replica_overrides, replica_config, replica_entries
from mmkd_jax.data import sources
from mmkd_jax.data.resident import PLACEMENTS
from mmkd_jax.errors import ConfigError, UnknownNameError
from mmkd_jax.evaluation import evaluators
from mmkd_jax.models import COMPUTE_DTYPES, model_names
from mmkd_jax.runs import storage
from mmkd_jax.teachers.cache import STORAGE_DTYPES
from mmkd_jax.teachers.convert import HEADS
from mmkd_jax.training import optim

def _owned_defaults(config: ml_collections.ConfigDict, spec: methods.MethodSpec) -> dict[str, Any]:
  """Every field the method owns with its default (look-ahead weights: the training weight)."""
  owned: dict[str, Any] = {"feature_layer": spec.feature_layer, "temperature": spec.temperature,
                           "feat_from_epoch": spec.feat_from_epoch}
  owned.update({f"weights.{t}": w for t, w in spec.terms.items()})
  owned.update({f"{spec.name}.{k}": v for k, v in spec.section.items()})
  return owned


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A locked copy with every method-owned field set (idempotent; the input is not changed)."""
  registry.import_plugins(config.imports)
  key = f"{config.method}@{config.dataset}"
  if config.resolved_for == key:
    return config
  if config.resolved_for:
    raise ConfigError(f"config.method: this config was resolved for {config.resolved_for}, not {key}; "
                      "change the method or dataset on the unresolved config and resolve that")
  if config.method not in methods.METHODS:
    raise ConfigError(f"config.method: unknown method {config.method!r}; known: "
                      f"{', '.join(methods.METHODS.names())}. {methods.METHODS.how_to_add}")
  spec = methods.METHODS.get(config.method)
  c = copy.deepcopy(config)
  c.unlock()
  for term in spec.terms:  # a user method's own terms
    for section in (c.weights, c.meta.lookahead_weights):
      if term not in section:
        section[term] = config_dict.placeholder(float)
  if spec.section and spec.name not in c:
    c[spec.name] = placeholders(spec.section)
  preset = {**spec.presets.get("*", {}), **spec.presets.get(c.dataset, {})}
  owned = _owned_defaults(c, spec)
  lookahead = {f"meta.lookahead_weights.{t}" for t in spec.terms} if spec.bilevel else set()
  unknown = set(preset) - set(owned) - lookahead
  if unknown:
    raise ValueError(f"method {spec.name!r}: presets name fields it does not own: {sorted(unknown)}")
  for path, default in owned.items():
    if get_field(c, path) is None:
      set_fields(c, {path: preset.get(path, default)})
  for term in spec.terms if spec.bilevel else ():
    path = f"meta.lookahead_weights.{term}"
    if c.meta.lookahead_weights[term] is None:
      set_fields(c, {path: preset.get(path, spec.lookahead.get(term, c.weights[term]))})
  for name, section in (("weights", c.weights), ("meta.lookahead_weights", c.meta.lookahead_weights)):
    valid = set(spec.terms) if (name == "weights" or spec.bilevel) else set()
    stray = [k for k in section if k not in valid and section[k] is not None]
    if stray:
      raise ConfigError(f"config.{name}.{stray[0]}: method {spec.name!r} has no such term "
                        f"({'its terms: ' + ', '.join(sorted(valid)) if valid else 'and no look-ahead'})")
  if c.faithful:  # the method's own "as the original computed it" fields too (presets["faithful"])
    set_fields(c, {**FAITHFUL, **spec.presets.get("faithful", {})})
  if c.schedule in optim.SCHEDULES and optim.SCHEDULES.get(c.schedule).spans_run and not c.schedule_epochs:
    c.schedule_epochs = c.epochs  # fixed from here on: a resume with more epochs keeps the schedule's shape
  c.resolved_for = key
  c.lock()
  return c


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Resolves and checks the config; returns the resolved one. Errors name the field."""
  c = resolve(config)

  def need(cond: bool, field: str, message: str) -> None:
    if not cond:
      raise ConfigError(f"config.{field}: {message}")
  choices = {"mode": MODES, "teacher_source": ("precomputed", "online"), "cache_dtype": STORAGE_DTYPES,
             "cache_logits_dtype": STORAGE_DTYPES, "adapter_init": ADAPTER_INITS, "dtype": COMPUTE_DTYPES,
             "replica_loop": REPLICA_LOOPS, "data_placement": PLACEMENTS, "checkpoint_head": HEADS,
             "teacher_training.views": TEACHER_VIEWS}
  for field, allowed in choices.items():
    value = get_field(c, field)
    need(value in allowed, field, f"{value!r} must be one of {', '.join(allowed)}")
  need(c.student in model_names(), "student", f"unknown model {c.student!r}; known: {', '.join(model_names())}")
  names = [t.name for t in c.teachers]
  need(len(set(names)) == len(names), "teachers", f"teacher names must be unique, got {names}")
  for i, t in enumerate(c.teachers):
    need(t.arch in model_names(), f"teachers[{i}].arch",
         f"unknown model {t.arch!r}; known: {', '.join(model_names())}")
    need(0.0 <= t.get("label_noise", 0.0) < 1.0, f"teachers[{i}].label_noise", "must be a rate in [0, 1)")
    need(t.get("epochs", 0) >= 0 and t.get("lr", 0.0) >= 0, f"teachers[{i}]", "epochs and lr must be >= 0 (0 = inherit)")
    need(t.get("checkpoint_head", "keep") in HEADS, f"teachers[{i}].checkpoint_head",
         f"{t.get('checkpoint_head')!r} is not one of {', '.join(HEADS)}")
    need(t.get("checkpoint_head", "keep") == "keep" or t.checkpoint, f"teachers[{i}].checkpoint_head",
         "reinit fine-tunes from teachers[i].checkpoint; set it (or use keep)")
  need(0.0 <= c.label_noise < 1.0, "label_noise", "must be a rate in [0, 1)")
  try:
    sources.check_image_dataset(c.dataset, c.data_dir or None, c.dataset_source_dir, c.image_size)
  except (UnknownNameError, ValueError) as e:
    raise ConfigError(f"config.dataset: {e}") from e
  need(c.num_replays >= 1, "num_replays", "must be at least 1")
  check_replica_overrides(c)
  if c.replica_shards != 1:
    count = len(replica_entries(c))
    need(count > 0, "replica_shards", "shards the replicas of config.replicas; set config.replicas or use 1")
    need(c.replica_shards > 0 and count % c.replica_shards == 0, "replica_shards",
         f"{c.replica_shards} groups do not divide the {count} replicas evenly")
    need(c.replica_loop != "map", "replica_shards", "a sharded replica axis is stepped by vmap; "
         "set config.replica_loop=vmap (or auto)")
  need(c.batch_size > 0 and c.eval_batch_size > 0, "batch_size", "must be positive")
  need(c.scan_steps >= 1, "scan_steps", "must be at least 1 (steps per dispatch)")
  need(c.epochs >= 1, "epochs", f"{c.epochs} trains nothing; give at least 1")
  need(c.teacher_training.epochs >= 1, "teacher_training.epochs", f"{c.teacher_training.epochs} trains nothing; give at least 1")
  need(c.temperature > 0, "temperature", "must be positive")
  for name in c.evaluators:
    need(name in evaluators.EVALUATORS, "evaluators",
         f"unknown evaluator {name!r}; known: {', '.join(evaluators.EVALUATORS.names())}")
  need("accuracy" in c.evaluators, "evaluators", "must include 'accuracy' (the best checkpoint is chosen on its top-1)")
  need(c.eval_every >= 1, "eval_every", "must be at least 1")
  need(c.divergence_factor == 0 or c.divergence_factor > 1, "divergence_factor",
       f"{c.divergence_factor} must be above 1 (a growth factor), or 0 to turn the check off")
  need(not c.student_checkpoint or c.mode not in ("distill", "pipeline") or storage.exists(c.student_checkpoint),
       "student_checkpoint",
       f"{c.student_checkpoint} does not exist")
  need(c.schedule in optim.SCHEDULES, "schedule", f"unknown schedule {c.schedule!r}; known: {', '.join(optim.SCHEDULES.names())}")
  need(c.optimizer in optim.OPTIMIZERS, "optimizer",
       f"unknown optimizer {c.optimizer!r}; known: {', '.join(optim.OPTIMIZERS.names())}")
  need(c.warmup_epochs >= 0 and c.schedule_epochs >= 0, "warmup_epochs", "epochs of warm-up (and schedule_epochs) must be >= 0")
  need(0.0 <= c.label_smoothing < 1.0, "label_smoothing", "must be in [0, 1)")
  need(c.feature_layer != -1, "feature_layer", "-1 is the pooled vector, not a feature map")
  bilevel.check_config(c)  # meta.*, and a bi-level method's SGD rule and hard buffer
  spec = methods.METHODS.get(c.method)
  if c.mode in ("distill", "pipeline", "precompute") and spec.needs_teachers:
    need(len(c.teachers) >= 1, "teachers", f"method {c.method!r} needs at least one teacher")
  if spec.validate is not None:
    spec.validate(c)
  return c


def member_configs(config: ml_collections.ConfigDict) -> list[tuple[str, ml_collections.ConfigDict]]:
  """The runs a command trains, each with its resolved config: (its name, config) per entry of
  ``config.replicas`` (``seed<s>[_<field>=<value>...]``, a directory of the work directory), or
  ("", config) for a single run. ``config``: resolved."""
  require_resolved(config)
  entries = replica_entries(config)
  if not entries:
    return [("", config)]
  return [(entry.name, resolve(replica_config(config, entry))) for entry in entries]


def require_resolved(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config``, which the command resolved once; code downstream takes it resolved and never
  resolves it again."""
  if not config.get("resolved_for"):
    raise ValueError("an unresolved config: mmkd_jax.config.validate (or resolve) it once, where the command starts")
  return config
