"""MMKD on CIFAR-100: ShuffleV2 student, 3 x resnet32x4 teachers (the reference's setting).

    python -m mmkd_jax.main --config configs/cifar100_shufflev2_resnet32x4.py --workdir runs/cifar100_ShuffleV2_resnet32x4

Needs CIFAR-100 prepared once (`python -m mmkd_jax.data.prepare cifar100`, with internet) and
three resnet32x4 teachers: trained by this command when missing (240 epochs each), or PyTorch
checkpoints via `--config.teachers` entries with `checkpoint=/path/to/ckpt.pth`.
Schedule: 240 epochs, batch 64, SGD lr 0.01 (x0.1 at 150/180/210), Nesterov,
wd 5e-4, kd_T 4, beta 100, meta step every 5 batches on the hard buffer (256).
Expected top-1: the MMKD paper's tables could not be retrieved (see experiments/RESULTS.md);
not yet run here (CIFAR needs a GPU-scale budget; the CPU of this project's CI cannot).
"""

from mmkd_jax.config_cifar import cifar100_config


def get_config(arg: str | None = None):
  return cifar100_config("ShuffleV2", "resnet32x4", arg)
