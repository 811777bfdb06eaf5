"""Any method on the offline digits dataset: the embedded default (no network, CPU, minutes).

    python -m mmkd_jax.main --config configs/digits.py --workdir runs/digits
    python -m mmkd_jax.main --config configs/digits.py:aver --workdir runs/digits_aver
    python -m mmkd_jax.main --config configs/digits.py:mmkd,smoke --workdir /tmp/smoke

Argument: ``[method][,smoke]`` (default ``mmkd``; ``--config.method=X`` works the same).
``pipeline`` mode trains the three teachers if they are missing (resnet14, resnet20, wrn_16_1,
into runs/teachers, 15 epochs each), precomputes their outputs for 4 augmentation replays, and
distils a resnet8 student for 15 epochs. With MMKD: meta-weighted KD + feature matching
(weights.feat 10 on digits, chosen on a validation split), hard buffer, exact hypergradient.
Teachers precomputed (each of the 4 views used 3.75 times over 15 epochs) so that the default
runs in minutes on a CPU; ``--config.teacher_source=online`` draws a new crop and flip every epoch,
as the originals do (replay ablation: experiments/RESULTS.md sections 8 and 10).
Expected (test split, seed 0, 2-core CPU): teachers resnet14 95.8-96.4 %, resnet20 97.2-97.5 %,
wrn_16_1 95.5-97.3 %; MMKD student 95.0-96.4 % last epoch (the range over four x86 machines of this
project with the same recipe: XLA:CPU compiles for the host's instruction set, so runs repeat bit for
bit on one machine, not across machines; experiments/RESULTS.md has the seed spread). About 8-14
minutes for the whole pipeline alone, by machine (2-core AMD EPYC VM, 2026-12-06: teachers 8.5,
precompute 0.4, student 4.3; 95.54 % last). Multi-seed tables: experiments/RESULTS.md.
``smoke``: 2 epochs, two 1-epoch resnet8 teachers, 2 replays (tests, wiring checks).
"""

from mmkd_jax import config as config_lib
from mmkd_jax.methods import METHODS


def get_config(arg: str | None = None):
  args = config_lib.parse_arg(arg, positional=("method",), defaults={"method": "mmkd"},
                              choices={"method": METHODS.names()})
  c = config_lib.base_config()
  c.method = args.method
  c.dataset = "digits"
  c.student = "resnet8"
  c.teachers = [config_lib.teacher("t_resnet14", "resnet14", seed=101),
                config_lib.teacher("t_resnet20", "resnet20", seed=102),
                config_lib.teacher("t_wrn_16_1", "wrn_16_1", seed=103)]
  c.epochs = 15
  c.lr_milestones = (10, 13)
  c.eval_batch_size = 359  # the whole digits test split in one batch
  c.teacher_training.epochs = 15
  c.teacher_training.lr_milestones = (10, 13)
  c.log_every = 11
  if args.smoke:
    c.smoke = True
    c.epochs = 2
    c.lr_milestones = (1,)
    c.teacher_training.epochs = 1
    c.teacher_training.lr_milestones = (1,)
    c.teachers = [config_lib.teacher("s_resnet8a", "resnet8", seed=201),
                  config_lib.teacher("s_resnet8b", "resnet8", seed=202)]
    c.num_replays = 2
    c.amtml.adapter_epochs = 1
  return c
