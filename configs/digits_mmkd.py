"""MMKD on the offline digits dataset: the embedded default (no network, CPU, minutes).

    python -m mmkd_jax.main --config configs/digits_mmkd.py --workdir runs/digits

``pipeline`` mode trains the three teachers if they are missing (resnet14, resnet20, wrn_16_1,
into runs/teachers), precomputes their outputs for 4 augmentation replays, and distils a
resnet8 student with MMKD (meta-weighted KD + feature matching, hard buffer, exact
hypergradient). Expected on a 2-core CPU: see experiments/RESULTS.md for the measured
accuracy (mean +- std over seeds) and runtime.

``get_config('smoke')`` is a tiny variant for tests (2 epochs, small teachers).
"""

from mmkd_jax.config_base import base_config, teacher


def get_config(arg: str | None = None):
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
  c.log_every = 11
  if arg == "smoke":
    c.epochs = 2
    c.lr_milestones = (1,)
    c.teacher_training.epochs = 1
    c.teacher_training.lr_milestones = (1,)
    c.teachers = [teacher("s_resnet8a", "resnet8", seed=201), teacher("s_resnet8b", "resnet8", seed=202)]
    c.num_replays = 2
  return c
