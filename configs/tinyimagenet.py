"""TinyImageNet (the reference's setting.py: 3 x resnet32x4 teachers), 32x32 crops of the 64x64 images.

    python -m mmkd_jax.main --config configs/tinyimagenet.py --workdir runs/tiny \
        --config.dataset_source_dir=/data/tiny-imagenet-200

Argument: ``student,teacher,method[,smoke]`` (defaults resnet8x4, resnet32x4, mmkd). Reads the
official ``tiny-imagenet-200`` directory (``--config.dataset_source_dir``; nothing is downloaded).
Preprocessing as the reference: RandomResizedCrop(32) + flip, its mean/std; evaluation on the
official validation images with Resize(32) + CenterCrop(32) (the reference evaluates with the
training transform, a bug: docs/methods.md). Schedule: 240 epochs, batch 64, SGD lr 0.05,
x0.1 at 150/180/210, Nesterov, wd 5e-4; 200 classes.
Teachers: precomputed, 8 replays (each crop-and-flip view used 30 times over 240 epochs, where the
original draws a new view every epoch), for speed: the amortised MMKD step is 1.68x / 1.95x faster
(experiments/RESULTS.md section 3). What that costs in accuracy, measured and not: docs/methods.md,
"Deviations common to several methods". ``--config.teacher_source=online``: the original's views.
Expected top-1: not run here (100,000 training images x 240 epochs is a GPU run; at the CIFAR
step times of experiments/RESULTS.md about 2 amortised CPU-seconds per step for resnet8x4).
``smoke``: one epoch, resnet8 teachers (tests).
"""

from mmkd_jax import config as config_lib
from mmkd_jax.methods import METHODS
from mmkd_jax.models import model_names


def get_config(arg: str | None = None):
  args = config_lib.parse_arg(
      arg, positional=("student", "teacher", "method"),
      defaults={"student": "resnet8x4", "teacher": "resnet32x4", "method": "mmkd"},
      choices={"student": model_names(), "teacher": model_names(), "method": METHODS.names()})
  c = config_lib.base_config()
  c.method, c.dataset, c.student = args.method, "tiny_imagenet", args.student
  c.teachers = [config_lib.teacher(f"{args.teacher}_{i}", args.teacher, seed=3000 + i) for i in range(3)]
  c.epochs, c.lr_milestones = 240, (150, 180, 210)
  c.num_replays = 8
  c.eval_batch_size = 500
  c.log_every = 100
  if args.smoke:
    c.student = "resnet8"
    config_lib.smoke(c, [config_lib.teacher(f"s{i}", "resnet8", seed=3100 + i) for i in range(2)])
  return c
