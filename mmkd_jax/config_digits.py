"""The digits setting shared by configs/digits_*.py: resnet8 <- resnet14, resnet20, wrn_16_1."""

from __future__ import annotations

import ml_collections

from mmkd_jax.config_base import base_config, teacher
from mmkd_jax.config_methods import apply_method


def digits_config(method: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """``arg='smoke'``: 2 epochs, two 1-epoch resnet8 teachers, 2 replays (tests, wiring checks)."""
  c = base_config()
  c.dataset = "digits"
  c.student = "resnet8"
  c.teachers = [teacher("t_resnet14", "resnet14", seed=101),
                teacher("t_resnet20", "resnet20", seed=102),
                teacher("t_wrn_16_1", "wrn_16_1", seed=103)]
  c.epochs = 15
  c.lr_milestones = (10, 13)
  c.eval_batch_size = 359  # the whole digits test split in one batch
  c.teacher_training.epochs = 15
  c.teacher_training.lr_milestones = (10, 13)
  c.amtml.adapter_epochs = 5
  c.log_every = 11
  if arg == "smoke":
    c.epochs = 2
    c.lr_milestones = (1,)
    c.teacher_training.epochs = 1
    c.teacher_training.lr_milestones = (1,)
    c.teachers = [teacher("s_resnet8a", "resnet8", seed=201), teacher("s_resnet8b", "resnet8", seed=202)]
    c.num_replays = 2
    c.amtml.adapter_epochs = 1
  return apply_method(c, method)
