"""Fashion-MNIST (offline, from Debian's dataset-fashion-mnist): any method, 3 teachers of
different architectures (resnet20, wrn_16_2, vgg8) -> resnet8.

    python -m mmkd_jax.main --config configs/fashion_mnist.py --workdir runs/fm
    python -m mmkd_jax.main --config configs/fashion_mnist.py:aver --workdir runs/fm_aver
    python -m mmkd_jax.main --config configs/fashion_mnist.py:mmkd,val --workdir runs/fm_val

Argument: ``[method][,pool=...][,val][,full][,smoke]`` (default ``mmkd``). Needs the IDX files
(``apt-get install dataset-fashion-mnist``, or ``--config.dataset_source_dir``).
Default (the CPU budget of experiments/RESULTS.md): student and teachers train on a fixed
subset, the first 5,000 training images (``train[:5000]``), and are tested on the official
10,000 test images; teachers 15 epochs, student 10 (lr x0.1 after epochs 6 and 8, batch 64).
``val``: evaluate on ``train[90%:]`` (6,000 training images never trained on) instead of the test
split, for any choice of hyperparameters. ``full``: the whole training split (validation:
``train[:90%]`` / ``train[90%:]``), 30 student epochs: a GPU-sized run. ``smoke``: 1 epoch.
``pool``: which teachers. ``homogeneous`` (default): the three above, all trained on the same
images (within 0.6 points of each other). ``specialists``: three resnet20, each trained only on
its third of the classes ({0,1,2,3}, {4,5,6}, {7,8,9}), so exactly one is competent for each image.
``mixed``: a strong resnet20 (the 5,000 images), a weak one (the first 500 images) and one trained
with 60 % symmetric label noise. Teachers of the three pools live apart (their names differ).
Teachers: precomputed, 8 replays (each view used 1.25 times over 10 epochs; ``full``: 3.75), for
speed: the 40-epoch AVER runs of RESULTS section 10 took 6.5 minutes per seed precomputed and 18.3
online (as 3 replicas). Online minus precomputed (RESULTS sections 8 and 10): MMKD at 10 epochs
-0.03 [-0.64, +0.58]; at 40 epochs AVER +0.04 [-0.35, +0.43], MMKD -0.02 [-0.28, +0.25] (Welch 95 %
intervals: no difference shown).
``--config.teacher_source=online`` draws a new crop and flip every epoch, as the originals do.
Expected (experiments/RESULTS.md, 3 seeds): see the Fashion-MNIST table; about 3.5 minutes per
plain run and 7 per MMKD run on a 2-core CPU, teachers and cache ~25 minutes once.
"""

from mmkd_jax import config as config_lib
from mmkd_jax.methods import METHODS


# Teacher pools: where teachers differ, and per-sample weighting has something to route.
POOLS = {
    "homogeneous": lambda: [config_lib.teacher("t_resnet20", "resnet20", seed=301),
                            config_lib.teacher("t_wrn_16_2", "wrn_16_2", seed=302),
                            config_lib.teacher("t_vgg8", "vgg8", seed=303)],
    "specialists": lambda: [config_lib.teacher("sp_0123", "resnet20", seed=311, classes=(0, 1, 2, 3)),
                            config_lib.teacher("sp_456", "resnet20", seed=312, classes=(4, 5, 6)),
                            config_lib.teacher("sp_789", "resnet20", seed=313, classes=(7, 8, 9))],
    "mixed": lambda: [config_lib.teacher("mx_strong", "resnet20", seed=321),
                      config_lib.teacher("mx_weak500", "resnet20", seed=322, train_split="train[:500]"),
                      config_lib.teacher("mx_noise60", "resnet20", seed=323, label_noise=0.6)],
}


def get_config(arg: str | None = None):
  args = config_lib.parse_arg(arg, positional=("method", "pool"), defaults={"method": "mmkd", "pool": "homogeneous"},
                              choices={"method": METHODS.names(), "pool": tuple(POOLS)},
                              switches=("val", "full", "smoke"))
  c = config_lib.base_config()
  c.method = args.method
  c.dataset = "fashion_mnist"
  c.student = "resnet8"
  c.teachers = POOLS[args.pool]()
  c.num_replays = 8
  c.eval_batch_size = 500
  c.log_every = 26
  if args.full:
    c.train_split = "train[:90%]" if args.val else "train"
    c.epochs, c.lr_milestones = 30, (18, 24, 27)
    c.teacher_training.epochs, c.teacher_training.lr_milestones = 30, (18, 24, 27)
  else:
    c.train_split = "train[:5000]"
    c.epochs, c.lr_milestones = 10, (6, 8)
    c.teacher_training.epochs, c.teacher_training.lr_milestones = 15, (9, 12)
  c.eval_split = "train[90%:]" if args.val else ""
  if args.smoke:
    c.smoke = True
    c.epochs = c.teacher_training.epochs = 1
    c.num_replays = 1
  return c
