"""EBKD: entropy-based teacher weights, on CIFAR-100 (vgg8 <- 3 x vgg13, as MMKD's README).

    python -m mmkd_jax.main --config configs/cifar100_ebkd.py --workdir runs/cifar100_ebkd

Needs CIFAR-100 prepared once (`python -m mmkd_jax.data.prepare cifar100`) and three vgg13
teachers (trained when missing, or `.pth` files via --config.teachers). 240 epochs.
Expected top-1: published numbers could not be retrieved (experiments/RESULTS.md); not run here.
"""

from mmkd_jax.config_cifar import cifar100_config
from mmkd_jax.config_methods import apply_method


def get_config(arg: str | None = None):
  return apply_method(cifar100_config("vgg8", "vgg13", arg), "ebkd")
