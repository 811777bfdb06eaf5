"""Run configuration: the base ConfigDict, the method-dependent fields, parsing and validation.

Config files (``configs/*.py``) build on ``base_config()`` and describe a *setting* (dataset,
models, schedule). Fields a method owns are left unset (``None``) there: ``feature_layer``,
``temperature``, ``weights.*``, ``meta.lookahead_weights.*`` and the method's own section
``config.<method>.*``. ``resolve`` fills each unset one from the method's preset for the dataset,
else its default, so ``--config.method=X`` on any config gets X's settings, and an explicit
value (config file or ``--config.<field>=...``) always wins.
"""

from __future__ import annotations

import copy
import os
import types
from typing import Any, Iterable, Mapping, Sequence

import ml_collections
from ml_collections import config_dict

from mmkd_jax import bilevel, evaluators, methods, optim, registry, storage
from mmkd_jax.data.resident import PLACEMENTS
from mmkd_jax.replica_spec import REPLICA_LOOPS, check_replica_overrides, get_field, replica_entries
from mmkd_jax.data import sources
from mmkd_jax.models import COMPUTE_DTYPES, model_names
from mmkd_jax.config_fields import placeholders, set_fields, upgrade_stored
from mmkd_jax.errors import ConfigError, UnknownNameError

MODES = ("train_teacher", "precompute", "distill", "evaluate", "pipeline", "export", "show_config")

# config.faithful=True: what the original PyTorch code computed, bugs included (docs/methods.md).
FAITHFUL = {
    "meta.hypergradient": "original",  # MMKD/L2T-ww's heavy-ball reverse pass, even under Nesterov
    "meta.rollback_bn": "replay",      # rollback keeps one BN update from replaying look-ahead step 1
    "fitnet.hint_gradient": False,     # FitNet-MKD's hint loss rebuilt from floats: no gradient
    "adapter_init": "torch",           # aligners / embeddings / regressors: PyTorch's default init
    "cache_dtype": "float32",          # the originals run teachers online in float32
    "meta.warmup_epochs": 0,           # MMKD's --meta_warmup changes nothing
}
ADAPTER_INITS = ("kaiming", "torch")


def teacher(name: str, arch: str, checkpoint: str = "", seed: int = 0, classes: Sequence[int] = (),
            label_noise: float = 0.0, train_split: str = "", epochs: int = 0, lr: float = 0.0,
            checkpoint_head: str = "keep") -> ml_collections.ConfigDict:
  """A teacher entry: ``checkpoint`` is an orbax teacher directory or a PyTorch .pth/.npz file;
  empty means ``<teacher_dir>/<dataset>[-<split>]_<name>`` (trained there by mode=train_teacher).
  ``checkpoint_head="reinit"``: ``checkpoint`` is where its training starts instead (e.g.
  torchvision's ImageNet weights), with a new classifier, and it is trained (fine-tuned) there.

  Its own training settings, overriding ``teacher_training`` and the run's (empty / 0 = inherit):
  ``classes`` it is trained on (a specialist sees only images of those classes; its head keeps
  every class), ``label_noise`` (symmetric: that share of its training labels replaced by another
  class, from ``label_noise_seed``), its ``train_split`` (e.g. 'train[:500]'), ``epochs``, ``lr``.
  They are part of the teacher's recorded identity."""
  return ml_collections.ConfigDict({"name": name, "arch": arch, "checkpoint": checkpoint, "seed": seed,
                                    "classes": tuple(int(k) for k in classes), "label_noise": float(label_noise),
                                    "train_split": train_split, "epochs": int(epochs), "lr": float(lr),
                                    "checkpoint_head": checkpoint_head})


def _term_names() -> list[str]:
  return list(dict.fromkeys(t for name in methods.METHODS for t in methods.METHODS.get(name).terms))


def base_config() -> ml_collections.ConfigDict:
  """Every field with its default; method-owned fields unset (see the module docstring)."""
  c = ml_collections.ConfigDict()
  c.mode = "pipeline"            # train_teacher | precompute | distill | evaluate | pipeline | export | show_config
  c.export_dir = ""              # mode=export: where the student goes ("" = <workdir>/export)
  c.method = "mmkd"              # a registered method (mmkd_jax.methods)
  c.imports = ()                 # your modules (dotted names or .py paths) that register parts
  c.resolved_for = ""            # set by resolve(): "<method>@<dataset>"
  c.faithful = False             # True: every "as the original code computed it" switch (FAITHFUL)
  # MMKD aligners, CA-MKD embeddings, FitNet regressors: 'kaiming' (normal, fan_out; zero bias) or
  # 'torch' (the originals: PyTorch's default U(+-1/sqrt(fan_in)) for weight and bias).
  c.adapter_init = "kaiming"
  c.dataset = "digits"           # registered name, TFDS name, or a prepared TFDS directory
  c.data_dir = ""                # "" = $TFDS_DATA_DIR or ~/tensorflow_datasets
  c.dataset_source_dir = ""      # raw files of builders that read local files ("" = their default)
  c.normalization = ml_collections.ConfigDict({"mean": (), "std": ()})  # () = the dataset's own
  c.image_size = 0               # variable-size images: the crop size (0 = the dataset's, 224); folder:<dir>: the size images are resized to (0 = 32)
  # "" = the dataset's own splits. Model selection without the test set: train on
  # 'train[:85%]', evaluate on 'train[85%:]' (teachers trained so are stored apart).
  c.train_split = ""
  c.eval_split = ""             # "" = the dataset's test split; e.g. train[90%:] for validation
  c.train_classes = ()           # train only on these classes' images (a specialist); () = all
  c.label_noise = 0.0            # share of training labels replaced by another class (symmetric noise)
  c.label_noise_seed = 0         # which labels the noise replaces, and by what
  c.seed = 0                     # initialisation, data order and the hard buffer's draws
  # Comma-separated seeds ("0,1,2"): one student per seed, trained together by one vmapped step
  # (mmkd_jax/replicas.py; seed s writes <workdir>/seed<s>/); "" = one run of `seed`.
  c.replicas = ""
  c.replica_loop = "auto"        # auto (= vmap) | vmap | map (one after another, less memory): how one program steps them
  c.replica_shards = 1           # G > 1: a (G, devices/G) ('replica', 'data') mesh, replicas sharded over G groups
  c.student = "resnet8"          # a registered model (mmkd_jax.models)
  # Start the student from these weights (a .pth/.npz state_dict, e.g. torchvision's, or a run's
  # or an export's directory) instead of a random initialisation; "" = random.
  c.student_checkpoint = ""
  c.checkpoint_head = "keep"     # student_checkpoint's classifier: keep | reinit (a new one, e.g. 1000 -> 120 classes)
  # Compute dtype of the student's (and online teachers') convolutions and matmuls: float32 |
  # bfloat16 (parameters, optimiser state, BatchNorm statistics and losses stay float32).
  c.dtype = "float32"
  c.teachers: Sequence[ml_collections.ConfigDict] = []  # config.teacher(name, arch, checkpoint, seed) entries
  c.teacher_dir = "runs/teachers"  # trained teachers and teacher caches
  c.teacher_source = "precomputed"  # precomputed | online
  c.cache_dir = ""               # "" = derived from teachers, dataset and augmentation
  c.cache_dtype = "bfloat16"     # feature maps in the cache: bfloat16 | float16 | float32
  c.cache_logits_dtype = "float32"  # logits in the cache (experiments/RESULTS.md: cache precision)
  c.num_replays = 4              # augmentation replays stored in the cache; replay = epoch % this
  c.augmentation_seed = 0        # crop offsets and flips of every (example, replay)
  c.trust_pickle = False         # allow arbitrary objects in teacher .pth files
  c.feature_layer = config_dict.placeholder(int)   # feat[...] of feature terms (method default -2)
  c.temperature = config_dict.placeholder(float)   # KD temperature (method default 4)
  c.feat_from_epoch = config_dict.placeholder(int)  # the feature term counts from this (0-based) epoch (method default 0)
  c.weights = placeholders({t: 1.0 for t in _term_names()})  # raw loss term -> weight
  # Data parallelism: BatchNorm statistics per device (like PyTorch DDP) unless synchronised.
  c.sync_batch_norm = False
  # BatchNorm statistics groups per global batch; 0 = one per device (1 with sync_batch_norm).
  # E.g. 8 on one device computes what 8 devices with per-device BatchNorm compute.
  c.batch_norm_groups = 0
  c.distributed = ml_collections.ConfigDict()  # jax.distributed (docs/scaling.md)
  c.distributed.coordinator_address = ""  # host:port of process 0; "" = single process or auto
  c.distributed.num_processes = 1         # processes in the job (with coordinator_address)
  c.distributed.process_id = 0            # this process (with coordinator_address)
  c.distributed.auto = True               # let JAX detect TPU pods / SLURM / JAX_COORDINATOR_ADDRESS

  # Student optimisation: the reference's multistep SGD by default (mmkd_jax.optim).
  c.batch_size = 64              # global batch (all devices and hosts)
  c.eval_batch_size = 128        # evaluation batch (padding is masked)
  # What each evaluation measures (mmkd_jax.evaluators): accuracy (top-1, top-5 over 5 classes,
  # loss; the best checkpoint is chosen on its top-1) | per_class | calibration (ECE) | teachers
  c.evaluators = ("accuracy",)
  c.eval_every = 1               # evaluate every this many epochs (and after the last)
  c.epochs = 240                 # student epochs
  c.lr = 0.05                    # student SGD learning rate
  c.lr_milestones = (150, 180, 210)  # epochs after which the learning rate is multiplied by lr_decay
  c.lr_decay = 0.1               # multistep factor
  c.momentum = 0.9               # SGD momentum (PyTorch semantics)
  c.nesterov = True              # Nesterov momentum (the reference README's --nesterov)
  c.weight_decay = 5e-4          # every parameter; sgd: L2 added to the gradient, adamw: decoupled
  c.schedule = "multistep"       # multistep (the papers') | cosine | constant | registered (optim.SCHEDULES)
  c.schedule_epochs = 0          # cosine: the epochs it spans (0 = epochs, fixed when resolved)
  c.warmup_epochs = 0.0          # linear warm-up of the learning rate over this many epochs, per step
  c.optimizer = "sgd"            # sgd (torch.optim.SGD) | adamw (torch.optim.AdamW) | registered (optim.OPTIMIZERS)
  c.adam_betas = (0.9, 0.999)    # adamw's (b1, b2)
  c.label_smoothing = 0.0        # of the ce term, as torch's CrossEntropyLoss(label_smoothing=...)

  c.meta = ml_collections.ConfigDict()
  c.meta.lr = 1e-3               # Adam learning rate of learned teacher weights (meta_params)
  c.meta.weight_decay = 1e-4     # Adam's L2-coupled weight decay (PyTorch Adam)
  c.meta.freq = 5                # meta step every `freq` batches and on the last batch of an epoch
  c.meta.warmup_epochs = 0       # epochs with uniform teacher weights and no meta step
  c.meta.lookahead_matching_steps = 2  # look-ahead steps on the look-ahead weights
  c.meta.lookahead_outer_steps = 1     # then steps on the outer objective (CE)
  c.meta.lookahead_weights = placeholders({t: 1.0 for t in _term_names()})
  c.meta.first_order = False     # drop the look-ahead's Hessian terms (cheaper, approximate)
  # How the exact hypergradient is computed (mmkd_jax.bilevel.MODES).
  c.meta.hypergradient = "forward_over_reverse"  # forward_over_reverse | reverse (exact) | original (the original code's)
  c.meta.remat = False           # recompute the look-ahead's activations (jax.checkpoint): less memory
  c.meta.rollback = True         # restore the student after the look-ahead (the reference always does)
  c.meta.rollback_bn = "exact"   # exact: restore BN statistics too; replay: the original's extra update
  for name in methods.METHODS:
    section = methods.METHODS.get(name).section
    if section:
      c[name] = placeholders(section)

  # Teacher training (mode=train_teacher / pipeline), same SGD rule.
  c.teacher_training = ml_collections.ConfigDict()
  c.teacher_training.epochs = 240        # epochs of a teacher trained by mode=train_teacher / pipeline
  c.teacher_training.lr = 0.05           # its learning rate
  c.teacher_training.lr_milestones = (150, 180, 210)  # its multistep milestones
  c.log_every = 50               # steps per logged window of training metrics
  c.data_placement = "host"      # host (grain streams it) | device | auto (by a memory plan): data/resident.py
  c.scan_steps = 1               # device placement: training steps per dispatch (unrolled)
  c.checkpoint_every_epochs = 1  # latest checkpoint every this many epochs (and the best one)
  c.keep_checkpoints = 2         # latest checkpoints kept
  c.async_checkpoints = True     # write checkpoints in the background
  c.stop_at_step = -1            # save and stop at this global step (tests, preemption drills)
  c.smoke = False                # a config's smoke variant: a wiring check whose accuracies mean nothing
  c.divergence_factor = 10.0     # stop when a loss term's window mean exceeds this x its first logged value; 0 = off
  return c


def smoke(c: ml_collections.ConfigDict, teachers: Sequence[ml_collections.ConfigDict],
          batch_size: int = 8) -> ml_collections.ConfigDict:
  """The ``smoke`` variant of a setting: tiny teachers and batches, one epoch, one replay."""
  c.teachers = list(teachers)
  c.batch_size = c.eval_batch_size = batch_size
  c.epochs = c.teacher_training.epochs = 1
  c.lr_milestones = c.teacher_training.lr_milestones = (1,)
  c.num_replays = 1
  c.log_every = 1
  c.smoke = True
  for name in methods.METHODS:  # hard buffers sized to the small batch
    if name in c and "buffer_size" in c[name]:
      c[name].buffer_size = batch_size
  return c


# ---------------------------------------------------------------------------------------
# Config files and overrides.


def parse_arg(arg: str | None, positional: Sequence[str] = (), defaults: Mapping[str, str] | None = None,
              choices: Mapping[str, Iterable[str]] | None = None, switches: Sequence[str] = ("smoke",)
              ) -> types.SimpleNamespace:
  """``get_config(arg)`` arguments, big_vision style: ``"vgg8,vgg13,aver"`` (positional, in
  order), ``"student=vgg8,method=aver"``, and switches such as ``"smoke"``, comma-separated.
  Anything unknown is a ConfigError listing what is valid."""
  values = dict(defaults or {})
  values.update({s: False for s in switches})
  choices = {k: tuple(v) for k, v in (choices or {}).items()}
  parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
  slots = iter(positional)
  for part in parts:
    if part in switches:
      values[part] = True
      continue
    key, value = part.split("=", 1) if "=" in part else (next(slots, None), part)
    if key is None or key not in positional:
      raise ConfigError(f"config argument {part!r} is not understood; valid: "
                        f"{', '.join(f'{p}=...' for p in positional)}{', ' if positional else ''}"
                        f"switches {', '.join(switches) or '(none)'}")
    if key in choices and value not in choices[key]:
      raise ConfigError(f"config argument {key}={value!r} is unknown; valid: {', '.join(choices[key])}")
    values[key] = value
  return types.SimpleNamespace(**values)


def load(path: str, arg: str | None = None, overrides: Mapping[str, Any] | Iterable[str] = ()
         ) -> ml_collections.ConfigDict:
  """A config file's ``get_config(arg)`` with overrides, as ``--config path:arg --config.k=v``."""
  from ml_collections.config_flags import config_flags as flags_impl  # pylint: disable=import-outside-toplevel
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path} does not exist")
  module = flags_impl._LoadConfigModule(os.path.splitext(os.path.basename(path))[0], path)  # pylint: disable=protected-access
  return set_fields(module.get_config() if arg is None else module.get_config(arg), overrides)


def from_json(stored: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """The config a run's ``config.json`` records, as a config to run again (``--config
  <workdir>/config.json``): every field as stored, resolved again (to the same values)."""
  stored = upgrade_stored(stored)
  registry.import_plugins(stored.get("imports", ()))
  c = base_config()
  _assign(c, stored)
  c.resolved_for = ""
  return c


def _assign(target: ml_collections.ConfigDict, values: Mapping[str, Any]) -> None:
  for key, value in values.items():
    if key not in target:  # a plug-in method's own section
      target[key] = ml_collections.ConfigDict(value) if isinstance(value, Mapping) else value
    elif key == "teachers":
      target[key] = [teacher(**entry) for entry in value]
    elif isinstance(target[key], ml_collections.ConfigDict) and isinstance(value, Mapping):
      _assign(target[key], value)
    elif isinstance(value, list):
      target[key] = tuple(value)
    else:
      target[key] = value


# ---------------------------------------------------------------------------------------
# Resolution and validation.


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
  from mmkd_jax.teachers.convert import HEADS  # pylint: disable=import-outside-toplevel

  def need(cond: bool, field: str, message: str) -> None:
    if not cond:
      raise ConfigError(f"config.{field}: {message}")
  from mmkd_jax.teachers.cache import STORAGE_DTYPES  # pylint: disable=import-outside-toplevel
  choices = {"mode": MODES, "teacher_source": ("precomputed", "online"), "cache_dtype": STORAGE_DTYPES,
             "cache_logits_dtype": STORAGE_DTYPES, "adapter_init": ADAPTER_INITS, "dtype": COMPUTE_DTYPES,
             "replica_loop": REPLICA_LOOPS, "data_placement": PLACEMENTS, "meta.hypergradient": bilevel.MODES,
             "checkpoint_head": HEADS, "meta.rollback_bn": ("exact", "replay")}
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
  need(c.meta.freq >= 1, "meta.freq", "must be at least 1")
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
  spec = methods.METHODS.get(c.method)
  need(not spec.bilevel or c.optimizer == "sgd", "optimizer",
       f"method {c.method!r} is bi-level: its look-ahead unrolls the student's SGD step (momentum buffers and "
       "all), so it trains with optimizer=sgd")
  if c.mode in ("distill", "pipeline", "precompute") and spec.needs_teachers:
    need(len(c.teachers) >= 1, "teachers", f"method {c.method!r} needs at least one teacher")
  if spec.validate is not None:
    spec.validate(c)
  return c


__all__ = ["ConfigError", "MODES", "base_config", "load", "parse_arg", "resolve", "set_fields", "teacher",
           "validate"]
