"""Every field of a run's config with its default and meaning: ``base_config()``, a teacher entry
(``teacher``), a setting's smoke variant (``smoke``), and the fields' choices.

Config files (``configs/*.py``) build on ``base_config()`` and describe a *setting* (dataset,
models, schedule). Fields a method owns are left unset (``None``) there: ``feature_layer``,
``temperature``, ``weights.*``, ``meta.lookahead_weights.*`` and the method's own section
``config.<method>.*``; ``mmkd_jax.config.resolve`` fills them.
"""

from __future__ import annotations

from typing import Sequence

import ml_collections
from ml_collections import config_dict

from mmkd_jax import methods
from mmkd_jax.methods import bilevel
from mmkd_jax.config.fields import placeholders

MODES = ("train_teacher", "precompute", "distill", "evaluate", "pipeline", "export", "show_config")

# config.faithful=True: what the original PyTorch code computed, bugs included (docs/methods.md).
FAITHFUL = {
    **bilevel.FAITHFUL,                # the bi-level strategy's (its hypergradient, rollback, warm-up)
    "fitnet.hint_gradient": False,     # FitNet-MKD's hint loss rebuilt from floats: no gradient
    "adapter_init": "torch",           # aligners / embeddings / regressors: PyTorch's default init
    "cache_dtype": "float32",          # the originals run teachers online in float32
}
ADAPTER_INITS = ("kaiming", "torch")
TEACHER_VIEWS = ("own", "shared")   # teacher_training.views


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
  # (mmkd_jax/training/replicas.py; seed s writes <workdir>/seed<s>/); "" = one run of `seed`.
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
  c.cache_logits_dtype = "float32"  # logits in the cache (experiments/cache_precision.py; RESULTS.md section 13)
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

  # Student optimisation: the reference's multistep SGD by default (mmkd_jax.training.optim).
  c.batch_size = 64              # global batch (all devices and hosts)
  c.eval_batch_size = 128        # evaluation batch (padding is masked)
  # What each evaluation measures (mmkd_jax.evaluation.evaluators): accuracy (top-1, top-5 over 5 classes,
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

  bilevel.add_meta_section(c, _term_names())  # meta.*: the bi-level strategy's fields
  for name in methods.METHODS:
    section = methods.METHODS.get(name).section
    if section:
      c[name] = placeholders(section)

  # Teacher training (mode=train_teacher / pipeline), same SGD rule.
  c.teacher_training = ml_collections.ConfigDict()
  c.teacher_training.epochs = 240        # epochs of a teacher trained by mode=train_teacher / pipeline
  c.teacher_training.lr = 0.05           # its learning rate
  c.teacher_training.lr_milestones = (150, 180, 210)  # its multistep milestones
  # Which crops and flips a teacher trains on. 'own': views of its own, from a seed derived from
  # the teacher's seed (teachers/stages.teacher_view_seed), so a student (augmentation_seed) never
  # trains on the very pixels its teachers were trained on, as with the originals, whose every run
  # draws fresh crops. 'shared': the student's views (augmentation_seed), as teachers were trained
  # before this field: a student then trains on the very views its teachers were trained on
  # (experiments/RESULTS.md section 12).
  c.teacher_training.views = "own"
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
