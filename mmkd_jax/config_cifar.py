"""Shared CIFAR-100 settings of the MMKD paper family (the reference's train_meta.py + README)."""

from __future__ import annotations

import ml_collections

from mmkd_jax.config_base import base_config, teacher

# The reference forces lr 0.01 for these students, whatever the command line says.
_LOW_LR_STUDENTS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")


def cifar100_config(student: str, teacher_arch: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """Three teachers of ``teacher_arch`` (separate trials) distilled into ``student``.

  ``arg``: ``None`` for the paper's schedule; ``'smoke'`` for 1 epoch (teachers too) and one
  augmentation replay, which checks the wiring, not accuracy. Teachers default to
  ``<teacher_dir>/cifar100_<name>`` (orbax, from mode=train_teacher); point
  ``teachers[i].checkpoint`` at the reference's ``.pth`` files to reuse PyTorch teachers.
  """
  c = base_config()
  c.dataset = "cifar100"
  c.student = student
  c.teachers = [teacher(f"{teacher_arch}_{i}", teacher_arch, seed=1000 + i) for i in range(3)]
  c.epochs = 240
  c.lr = 0.01 if student in _LOW_LR_STUDENTS else 0.05
  c.lr_milestones = (150, 180, 210)
  c.kd.beta = 100.0
  c.meta.hard_buffer = True
  c.meta.buffer_size = 256
  c.eval_batch_size = 500
  c.num_replays = 8
  c.log_every = 100
  c.teacher_training.epochs = 240
  c.teacher_training.lr = 0.01 if teacher_arch in _LOW_LR_STUDENTS else 0.05
  if arg == "smoke":
    c.epochs = 1
    c.teacher_training.epochs = 1
    c.num_replays = 1
  return c
