"""Your parts on your data: two tiny_net teachers -> a tiny_net student with confident_kd.

    python -m mmkd_jax.main --config tests/plugin/my_config.py --workdir runs/mine

Expected: teachers and student well above chance (25%); under a minute on a 2-core CPU.
"""

import os

from mmkd_jax import config as config_lib

PARTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "my_parts.py")


def get_config(arg=None):
  args = config_lib.parse_arg(arg)  # accepts only "smoke"
  c = config_lib.base_config()
  c.imports = (PARTS,)      # imported wherever this config is loaded or resolved
  c.dataset = "bright_quadrant"
  c.method = "confident_kd"
  c.student = "tiny_net"
  c.teachers = [config_lib.teacher("a", "tiny_net", seed=1), config_lib.teacher("b", "tiny_net", seed=2)]
  c.batch_size, c.eval_batch_size = 32, 64
  c.epochs = 2 if args.smoke else 10
  c.lr_milestones = (100,)
  c.teacher_training.epochs, c.teacher_training.lr_milestones = (1 if args.smoke else 10), (100,)
  c.num_replays = 2
  c.log_every = 4
  return c
