"""The reference's 224x224 settings: Stanford Dogs, CUB-200-2011, MIT67 with 3 x ResNet34x4 teachers.

    python -m mmkd_jax.main --config configs/finegrained.py --workdir runs/dogs_mmkd
    python -m mmkd_jax.main --config configs/finegrained.py:dataset=cub_200_2011,student=ShuffleV2_Imagenet --workdir runs/cub
    python -m mmkd_jax.main --config configs/finegrained.py:dataset=mit67 --workdir runs/mit67 \
        --config.dataset_source_dir=/data/mit67

Argument: ``dataset,student,teacher,method[,smoke]`` (positional or ``key=value``; defaults
stanford_dogs, ResNet18, ResNet34x4, mmkd). The reference's setting.py lists 3 x ResNet34x4 for
Dogs (CUB and MIT67: the same recipe); its students include ResNet18, MobileNetV2_Imagenet,
ShuffleV2_Imagenet, vgg8_imagenet. Stanford Dogs and CUB are TFDS datasets (prepare them once
with internet: ``python -m mmkd_jax.data.prepare stanford_dogs``); MIT67 reads its official
directory (``--config.dataset_source_dir``). Preprocessing as the reference: RandomResizedCrop(224)
+ flip, Resize(256) + CenterCrop(224), ImageNet mean/std. Schedule: 240 epochs, batch 64, SGD lr
0.05 (0.01 for MobileNetV2 / ShuffleNet students), x0.1 at 150/180/210, Nesterov, wd 5e-4.
Teachers: precomputed, 8 replays (each crop-and-flip view used 30 times over 240 epochs, where the
original draws a new view every epoch), for speed: the amortised MMKD step is 1.68x / 1.95x faster
(experiments/RESULTS.md section 3). What that costs in accuracy, measured and not: docs/methods.md,
"Deviations common to several methods". ``--config.teacher_source=online``: the original's views.
Expected top-1: not run here (a GPU-scale budget). Runtime estimate from the step benchmark
(experiments/RESULTS.md, 224x224 section): several CPU-seconds per plain step at batch 64 on the
2-core CPU, i.e. a GPU run. ``smoke``: 32x32 crops, one epoch, ResNet18 teachers (tests).
"""

from mmkd_jax import config as config_lib
from mmkd_jax.methods import METHODS
from mmkd_jax.models import model_names

_LOW_LR = ("MobileNetV2_Imagenet", "ShuffleV2_Imagenet")


def get_config(arg: str | None = None):
  args = config_lib.parse_arg(
      arg, positional=("dataset", "student", "teacher", "method"),
      defaults={"dataset": "stanford_dogs", "student": "ResNet18", "teacher": "ResNet34x4", "method": "mmkd"},
      choices={"dataset": ("stanford_dogs", "cub_200_2011", "mit67"), "student": model_names(),
               "teacher": model_names(), "method": METHODS.names()})
  c = config_lib.base_config()
  c.method, c.dataset, c.student = args.method, args.dataset, args.student
  c.teachers = [config_lib.teacher(f"{args.teacher}_{i}", args.teacher, seed=2000 + i) for i in range(3)]
  c.epochs, c.lr_milestones = 240, (150, 180, 210)
  c.lr = 0.01 if args.student in _LOW_LR else 0.05
  c.teacher_training.lr = 0.01 if args.teacher in _LOW_LR else 0.05
  c.num_replays = 8
  c.eval_batch_size = 64
  c.log_every = 50
  if args.smoke:
    c.image_size = 32
    config_lib.smoke(c, [config_lib.teacher(f"s{i}", "ResNet18", seed=2100 + i) for i in range(2)])
  return c
