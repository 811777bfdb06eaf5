"""Defaults shared by every config in ``configs/`` (each file overrides what it needs)."""

from __future__ import annotations

from typing import Sequence

import ml_collections


def teacher(name: str, arch: str, checkpoint: str = "", seed: int = 0) -> ml_collections.ConfigDict:
  """A teacher entry: ``checkpoint`` is an orbax teacher directory or a PyTorch .pth/.npz file;
  empty means ``<teacher_dir>/<dataset>_<name>`` (trained there by mode=train_teacher)."""
  return ml_collections.ConfigDict({"name": name, "arch": arch, "checkpoint": checkpoint, "seed": seed})


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = "pipeline"            # train_teacher | precompute | distill | evaluate | pipeline
  c.method = "mmkd"              # see mmkd_jax.distill.methods.METHODS
  c.dataset = "digits"
  c.data_dir = ""                # "" = $TFDS_DATA_DIR or ~/tensorflow_datasets
  # "" = the dataset's own splits. Model selection without the test set: train on
  # 'train[:85%]', evaluate on 'train[85%:]' (and use a teacher_dir of teachers trained so).
  c.train_split = ""
  c.eval_split = ""
  c.seed = 0
  c.student = "resnet8"
  c.teachers: Sequence[ml_collections.ConfigDict] = []
  c.teacher_dir = "runs/teachers"
  c.teacher_source = "precomputed"  # precomputed | online
  c.cache_dir = ""               # "" = derived from teachers, dataset and augmentation
  c.cache_dtype = "bfloat16"     # bfloat16 | float16 | float32
  c.num_replays = 4              # augmentation replays stored in the cache; replay = epoch % this
  c.augmentation_seed = 0
  c.trust_pickle = False         # allow arbitrary objects in teacher .pth files
  c.feature_layer = -2           # feat[...] used by feature terms and cached (-2: last map)
  # Data parallelism: BatchNorm statistics per device (like PyTorch DDP) unless synchronised.
  c.sync_batch_norm = False
  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator_address = ""  # host:port of process 0; "" = single process or auto
  c.distributed.num_processes = 1
  c.distributed.process_id = 0
  c.distributed.auto = True      # let JAX detect TPU pods / SLURM / JAX_COORDINATOR_ADDRESS

  # Student optimisation: the reference's SGD schedule.
  c.batch_size = 64
  c.eval_batch_size = 128
  c.epochs = 240
  c.lr = 0.05
  c.lr_milestones = (150, 180, 210)
  c.lr_decay = 0.1
  c.momentum = 0.9
  c.nesterov = True
  c.weight_decay = 5e-4

  c.kd = ml_collections.ConfigDict()
  c.kd.temperature = 4.0
  c.kd.alpha = 1.0               # weight of the KD term in the look-ahead (matching) objective
  c.kd.beta = 100.0              # weight of the feature term
  c.kd.deep_aligner = False      # the 1x1-3x3-1x1 aligner (the reference's --convs intent)
  c.kd.teacher_index = 0         # method 'kd': which teacher

  c.aekd = ml_collections.ConfigDict()
  c.aekd.c = 0.6                 # cap on a teacher's weight (the reference's C)
  c.aekd.normalize = False       # the reference's --svm_norm

  c.amtml = ml_collections.ConfigDict()
  c.amtml.temperature = 5.0
  c.amtml.alpha = 0.7            # kd_ratio: 2 alpha T^2 KL + (1 - alpha) CE
  c.amtml.hint_weight = 1.0
  c.amtml.angle_weight = 1.0
  c.amtml.adapter_epochs = 80    # latent vectors train with the student, then freeze
  c.amtml.kd_reduction = "mean"  # 'mean' as coded (/ B C) or 'batchmean'

  c.meta = ml_collections.ConfigDict()
  c.meta.lr = 1e-3
  c.meta.weight_decay = 1e-4
  c.meta.freq = 5                # meta step every `freq` batches and on the last batch of an epoch
  c.meta.warmup_epochs = 0       # epochs with uniform teacher weights and no meta step
  c.meta.lookahead_matching_steps = 2
  c.meta.lookahead_outer_steps = 1
  c.meta.first_order = False
  # How the exact hypergradient is computed (mmkd_jax.bilevel.MODES): the reverse recursion
  # with forward-over-reverse products, or reverse-over-reverse jax.grad of the unrolled steps.
  c.meta.hypergradient = "forward_over_reverse"
  c.meta.rollback = True
  c.meta.hard_buffer = True
  c.meta.buffer_size = 256
  c.meta.gram_per_device = False  # feature weighter: per-device Gram matrices (huge batches)

  # Teacher training (mode=train_teacher / pipeline), same SGD rule.
  c.teacher_training = ml_collections.ConfigDict()
  c.teacher_training.epochs = 240
  c.teacher_training.lr = 0.05
  c.teacher_training.lr_milestones = (150, 180, 210)

  c.log_every = 50
  c.checkpoint_every_epochs = 1
  c.keep_checkpoints = 2
  c.async_checkpoints = True
  c.stop_at_step = -1            # save and stop at this global step (tests, preemption drills)
  return c
