"""The CIFAR model zoo of the reference (RepDistiller/MMKD), as Flax linen modules.

Every model is called as ``model.apply(variables, x, train=..., preact=...)`` on NHWC
inputs and returns ``(features, logits)``: the reference's ``is_feat=True`` feature list
(same order and meaning, maps in NHWC, the last entry the pooled vector) and the logits.
In train mode pass ``mutable=['batch_stats']`` to receive the updated running statistics.
"""

from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn

from mmkd_jax.models.layers import BatchNorm
from mmkd_jax.models.mobilenetv2 import MobileNetV2
from mmkd_jax.models.resnet import ResNet
from mmkd_jax.models.shufflenet import ShuffleNetV1, ShuffleNetV2
from mmkd_jax.models.vgg import VGG, VGG_CONFIGS
from mmkd_jax.models.wrn import WideResNet

_CIFAR_RESNET_FILTERS = (16, 16, 32, 64)
_X4_FILTERS = (32, 64, 128, 256)

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    **{f"resnet{d}": functools.partial(ResNet, d, _CIFAR_RESNET_FILTERS)
       for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": functools.partial(ResNet, 8, _X4_FILTERS),
    "resnet32x4": functools.partial(ResNet, 32, _X4_FILTERS),
    **{f"wrn_{d}_{w}": functools.partial(WideResNet, d, w) for d in (16, 40) for w in (1, 2)},
    **{name: functools.partial(VGG, channels) for name, channels in VGG_CONFIGS.items()},
    "MobileNetV2": MobileNetV2,
    "ShuffleV1": ShuffleNetV1,
    "ShuffleV2": ShuffleNetV2,
}

MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)

# Name of each model's final classifier (its head is: global average pool of feat[-2], then this).
CLASSIFIER_NAME: dict[str, str] = {
    name: ("fc" if name.startswith(("resnet", "wrn")) else "classifier" if name.startswith("vgg")
           else "classifier.0" if name == "MobileNetV2" else "linear") for name in MODEL_NAMES}

# Index of feat[-2], the last feature map before pooling, which MMKD matches and weights.
PENULTIMATE_FEATURE_INDEX: dict[str, int] = {
    name: (4 if name.startswith("vgg") or name == "MobileNetV2" else 3) for name in MODEL_NAMES}


def get_model(name: str, num_classes: int, bn_groups: int = 1) -> nn.Module:
  """Returns the zoo model ``name`` with a ``num_classes``-way classifier.

  ``bn_groups > 1`` gives every BatchNorm per-group batch statistics (one group per device =
  PyTorch DDP's per-device BatchNorm); 1 is BatchNorm over the whole global batch.
  """
  if name not in _REGISTRY:
    raise ValueError(f"Unknown model {name!r}. Known models: {', '.join(MODEL_NAMES)}.")
  if num_classes < 1:
    raise ValueError(f"num_classes must be positive, got {num_classes}")
  return _REGISTRY[name](num_classes=num_classes, bn_groups=bn_groups)


__all__ = ["BatchNorm", "CLASSIFIER_NAME", "MODEL_NAMES", "PENULTIMATE_FEATURE_INDEX", "get_model"]
