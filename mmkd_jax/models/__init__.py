"""Models by name: the CIFAR zoo of the reference (RepDistiller/MMKD), its ImageNet-style models
(``models/imagenet.py``) and any model a user registers with ``@register_model``.

Every model is called as ``model.apply(variables, x, train=..., preact=...)`` on NHWC
inputs of any size and returns ``(features, logits)``: the reference's ``is_feat=True`` feature
list (same order and meaning, maps in NHWC, the last entry the pooled vector) and the logits.
In train mode pass ``mutable=['batch_stats']`` to receive the updated running statistics.

A user model is a factory ``(num_classes, bn_groups) -> flax.linen.Module`` following that
calling convention::

    @register_model("my_net", classifier="head")
    def my_net(num_classes: int, bn_groups: int = 1) -> nn.Module:
      return MyNet(num_classes)

``classifier`` names the final Dense layer's parameters (methods that apply a teacher's
classifier to other features, like CA-MKD, need it).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import flax.linen as nn

from mmkd_jax.models import imagenet
from mmkd_jax.models.layers import BatchNorm
from mmkd_jax.models.mobilenetv2 import MobileNetV2
from mmkd_jax.models.precision import COMPUTE_DTYPES, with_compute_dtype
from mmkd_jax.models.resnet import ResNet
from mmkd_jax.models.shufflenet import ShuffleNetV1, ShuffleNetV2
from mmkd_jax.models.vgg import VGG, VGG_CONFIGS
from mmkd_jax.models.wrn import WideResNet
from mmkd_jax.registry import Registry, origin_of

ModelFactory = Callable[..., nn.Module]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  factory: ModelFactory           # (num_classes, bn_groups=1) -> module
  classifier: str | None = None   # parameter name of the final Dense layer


MODELS: Registry[ModelSpec] = Registry(
    "model", "Register your own with @mmkd_jax.models.register_model in a module listed in config.imports.")


def register_model(name: str, classifier: str | None = None) -> Callable[[ModelFactory], ModelFactory]:
  """Decorator: registers ``factory(num_classes, bn_groups=1) -> nn.Module`` as ``name``."""
  def decorator(factory: ModelFactory) -> ModelFactory:
    MODELS.add(name, ModelSpec(factory, classifier), origin_of(factory))
    return factory
  return decorator


def _add_zoo() -> None:
  filters, x4 = (16, 16, 32, 64), (32, 64, 128, 256)
  zoo: dict[str, tuple[ModelFactory, str]] = {
      **{f"resnet{d}": (functools.partial(ResNet, d, filters), "fc") for d in (8, 14, 20, 32, 44, 56, 110)},
      "resnet8x4": (functools.partial(ResNet, 8, x4), "fc"),
      "resnet32x4": (functools.partial(ResNet, 32, x4), "fc"),
      **{f"wrn_{d}_{w}": (functools.partial(WideResNet, d, w), "fc") for d in (16, 40) for w in (1, 2)},
      **{name: (functools.partial(VGG, channels), "classifier") for name, channels in VGG_CONFIGS.items()},
      "MobileNetV2": (MobileNetV2, "classifier.0"),
      "ShuffleV1": (ShuffleNetV1, "linear"),
      "ShuffleV2": (ShuffleNetV2, "linear"),
  }
  resnet = functools.partial
  zoo.update({  # the reference's ImageNet-style models (models/imagenet.py), names as its model_dict
      "ResNet18": (resnet(imagenet.ResNetImagenet, (2, 2, 2, 2), False), "fc"),
      "ResNet18Double": (resnet(imagenet.ResNetImagenet, (2, 2, 2, 2), False), "fc"),  # the reference's ignores its width
      "ResNet34": (resnet(imagenet.ResNetImagenet, (3, 4, 6, 3), False), "fc"),
      "ResNet34x2": (resnet(imagenet.ResNetImagenet, (3, 4, 6, 3), False), "fc"),  # = ResNet34, as the reference
      "ResNet34x4": (resnet(imagenet.ResNetImagenet, (3, 4, 6, 3), False), "fc"),  # = ResNet34, as the reference
      "ResNet50": (resnet(imagenet.ResNetImagenet, (3, 4, 6, 3), True), "fc"),
      "ResNet101": (resnet(imagenet.ResNetImagenet, (3, 4, 23, 3), True), "fc"),
      "wrn_50_2": (resnet(imagenet.ResNetImagenet, (3, 4, 6, 3), True, width_per_group=128), "fc"),
      "resnext50_32x4d": (resnet(imagenet.ResNetImagenet, (3, 4, 6, 3), True, groups=32, width_per_group=4), "fc"),
      "MobileNetV2_Imagenet": (imagenet.MobileNetV2Imagenet, "classifier.1"),
      "ShuffleV2_Imagenet": (imagenet.ShuffleNetV2Imagenet, "fc"),
      **{name: (resnet(imagenet.VGGImagenet, cfg, split), "classifier.6")
         for name, (cfg, split) in imagenet.VGG_IMAGENET.items()},
  })
  # torchvision's (and timm's resnet18/34/50) names for the same architectures: their
  # state_dicts load as they are (--config.teachers[i].checkpoint=resnet50.pth)
  for torchvision_name, ours in (("resnet18", "ResNet18"), ("resnet34", "ResNet34"), ("resnet50", "ResNet50"),
                                 ("resnet101", "ResNet101"), ("wide_resnet50_2", "wrn_50_2"),
                                 ("mobilenet_v2", "MobileNetV2_Imagenet"), ("shufflenet_v2_x1_0", "ShuffleV2_Imagenet")):
    zoo[torchvision_name] = zoo[ours]
  for name, (factory, classifier) in zoo.items():
    register_model(name, classifier)(factory)  # as a user's model is


_add_zoo()


def get_model(name: str, num_classes: int, bn_groups: int = 1, dtype: str | None = None) -> nn.Module:
  """The registered model ``name`` with a ``num_classes``-way classifier.

  ``bn_groups > 1`` gives every BatchNorm per-group batch statistics (one group per device =
  PyTorch DDP's per-device BatchNorm); 1 is BatchNorm over the whole global batch.
  ``dtype="bfloat16"`` computes the forward pass in bfloat16 (``models/precision.py``).
  """
  spec = MODELS.get(name)
  if num_classes < 1:
    raise ValueError(f"num_classes must be positive, got {num_classes}")
  return with_compute_dtype(spec.factory(num_classes=num_classes, bn_groups=bn_groups), dtype)


def model_names() -> tuple[str, ...]:
  return MODELS.names()


def classifier_name(name: str) -> str:
  classifier = MODELS.get(name).classifier
  if classifier is None:
    raise ValueError(f"model {name!r} was registered without classifier=...; methods that apply a "
                     "teacher's classifier (CA-MKD) need the name of its final Dense layer")
  return classifier


__all__ = ["BatchNorm", "COMPUTE_DTYPES", "with_compute_dtype", "MODELS", "ModelSpec", "classifier_name", "get_model", "model_names", "register_model"]
