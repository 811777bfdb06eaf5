"""The ImageNet-style models of the MMKD reference (its ``resnet_imagenet.py``,
``mobilenetv2_imagenet.py``, ``shuffleNetv2_imagenet.py``, ``vgg_imagenet.py``; torchvision's
architectures with the reference's feature taps), for the 224x224 datasets (Stanford Dogs, CUB,
MIT67). Flax module names mirror the PyTorch paths, so ``teachers.convert`` loads the
reference's checkpoints; every model ends in global (or adaptive) pooling, so any size works.

Features (``is_feat=True`` of the reference):
  * ResNets: ``[maxpool(relu(bn1(conv1))), layer1, layer2, layer3, layer4, pooled]``;
  * MobileNetV2: the outputs of ``features[0:1], [1:4], [4:7], [7:14], [14:18]``, then the pooled
    1x1-conv output;
  * ShuffleNetV2: ``[maxpool(conv1), stage2, stage3, stage4, pooled conv5]``;
  * VGG: the outputs of its ``features`` list at the reference's split indices (a tap that ends
    before a ReLU holds that ReLU's output: the reference's in-place ReLU overwrites it), the last
    map, and the flattened 7x7 adaptive pool.
Quirk kept: the reference's ``wide_resnet34_4`` (``ResNet34x4``) is ResNet34 (its BasicBlock
ignores ``width_per_group``). Dropout of the VGG and MobileNetV2 classifiers is not applied
(the trainer passes no dropout RNG; eval is unaffected).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmkd_jax.models.layers import adaptive_avg_pool
from mmkd_jax.models.layers import BatchNorm, channel_shuffle, conv, dense

Array = jax.Array


def _max_pool_3x3_s2(x: Array) -> Array:
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class _Block(nn.Module):
  """torchvision's BasicBlock (expansion 1) or Bottleneck (expansion 4, stride on the 3x3)."""
  planes: int
  stride: int
  bottleneck: bool
  downsample: bool
  groups: int = 1
  base_width: int = 64
  bn_groups: int = 1

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    bn = lambda name: BatchNorm(groups=self.bn_groups, name=name)
    if self.bottleneck:
      width = int(self.planes * (self.base_width / 64.0)) * self.groups
      out = nn.relu(bn("bn1")(conv(width, 1, name="conv1")(x), train))
      out = nn.relu(bn("bn2")(conv(width, 3, self.stride, 1, groups=self.groups, name="conv2")(out), train))
      out = bn("bn3")(conv(self.planes * 4, 1, name="conv3")(out), train)
    else:
      out = nn.relu(bn("bn1")(conv(self.planes, 3, self.stride, 1, name="conv1")(x), train))
      out = bn("bn2")(conv(self.planes, 3, 1, 1, name="conv2")(out), train)
    if self.downsample:
      x = bn("downsample.1")(conv(out.shape[-1], 1, self.stride, name="downsample.0")(x), train)
    return nn.relu(out + x)


class ResNetImagenet(nn.Module):
  layers: Sequence[int]
  bottleneck: bool
  num_classes: int
  groups: int = 1
  width_per_group: int = 64
  bn_groups: int = 1

  @nn.compact
  def __call__(self, x: Array, train: bool = False, preact: bool = False) -> tuple[list[Array], Array]:
    del preact  # no preact taps in the reference's ImageNet ResNets
    x = nn.relu(BatchNorm(groups=self.bn_groups, name="bn1")(conv(64, 7, 2, 3, name="conv1")(x), train))
    x = _max_pool_3x3_s2(x)
    feats = [x]
    expansion = 4 if self.bottleneck else 1
    in_planes = 64
    for layer, (planes, blocks) in enumerate(zip((64, 128, 256, 512), self.layers), start=1):
      for i in range(blocks):
        stride = (1 if layer == 1 else 2) if i == 0 else 1
        x = _Block(planes, stride, self.bottleneck, i == 0 and (stride != 1 or in_planes != planes * expansion),
                   self.groups, self.width_per_group if self.bottleneck else 64, self.bn_groups,
                   name=f"layer{layer}.{i}")(x, train)
        in_planes = planes * expansion
      feats.append(x)
    pooled = jnp.mean(x, axis=(1, 2))
    feats.append(pooled)
    return feats, dense(self.num_classes, pooled.shape[-1], name="fc")(pooled)


def _make_divisible(v: float, divisor: int = 8) -> int:
  new = max(divisor, int(v + divisor / 2) // divisor * divisor)
  return new + divisor if new < 0.9 * v else new


class _ConvBNReLU6(nn.Module):
  features: int
  kernel: int = 3
  stride: int = 1
  groups: int = 1
  bn_groups: int = 1

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    x = conv(self.features, self.kernel, self.stride, (self.kernel - 1) // 2, groups=self.groups, name="0")(x)
    return jnp.clip(BatchNorm(groups=self.bn_groups, name="1")(x, train), 0.0, 6.0)


class _MobileInvertedResidual(nn.Module):
  out: int
  stride: int
  expand: int
  bn_groups: int = 1

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    hidden = int(round(x.shape[-1] * self.expand))
    y, i = x, 0
    if self.expand != 1:
      y = _ConvBNReLU6(hidden, 1, bn_groups=self.bn_groups, name="conv.0")(y, train)
      i = 1
    y = _ConvBNReLU6(hidden, 3, self.stride, groups=hidden, bn_groups=self.bn_groups, name=f"conv.{i}")(y, train)
    y = conv(self.out, 1, name=f"conv.{i + 1}")(y)
    y = BatchNorm(groups=self.bn_groups, name=f"conv.{i + 2}")(y, train)
    return x + y if self.stride == 1 and x.shape[-1] == self.out else y


class MobileNetV2Imagenet(nn.Module):
  num_classes: int
  width_mult: float = 1.0
  bn_groups: int = 1

  @nn.compact
  def __call__(self, x: Array, train: bool = False, preact: bool = False) -> tuple[list[Array], Array]:
    del preact
    settings = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))
    modules = [_ConvBNReLU6(_make_divisible(32 * self.width_mult), 3, 2, bn_groups=self.bn_groups, name="features.0")]
    for t, c, n, s in settings:
      for i in range(n):
        modules.append(_MobileInvertedResidual(_make_divisible(c * self.width_mult), s if i == 0 else 1, t,
                                               self.bn_groups, name=f"features.{len(modules)}"))
    last = _make_divisible(1280 * max(1.0, self.width_mult))
    modules.append(_ConvBNReLU6(last, 1, bn_groups=self.bn_groups, name=f"features.{len(modules)}"))
    feats = []
    for i, module in enumerate(modules):
      x = module(x, train)
      if i + 1 in (1, 4, 7, 14, 18):
        feats.append(x)
    pooled = jnp.mean(x, axis=(1, 2))
    feats.append(pooled)
    return feats, dense(self.num_classes, last, name="classifier.1")(pooled)


class _ShuffleInvertedResidual(nn.Module):
  out: int
  stride: int
  bn_groups: int = 1

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    bn = lambda name: BatchNorm(groups=self.bn_groups, name=name)
    half = self.out // 2
    if self.stride == 1:
      left, right = jnp.split(x, 2, axis=-1)
    else:
      c = x.shape[-1]
      left = bn("branch1.1")(conv(c, 3, self.stride, 1, groups=c, name="branch1.0")(x), train)
      left = nn.relu(bn("branch1.3")(conv(half, 1, name="branch1.2")(left), train))
      right = x
    right = nn.relu(bn("branch2.1")(conv(half, 1, name="branch2.0")(right), train))
    right = bn("branch2.4")(conv(half, 3, self.stride, 1, groups=half, name="branch2.3")(right), train)
    right = nn.relu(bn("branch2.6")(conv(half, 1, name="branch2.5")(right), train))
    return channel_shuffle(jnp.concatenate([left, right], axis=-1), 2)


class ShuffleNetV2Imagenet(nn.Module):
  num_classes: int
  repeats: Sequence[int] = (4, 8, 4)
  channels: Sequence[int] = (24, 116, 232, 464, 1024)
  bn_groups: int = 1

  @nn.compact
  def __call__(self, x: Array, train: bool = False, preact: bool = False) -> tuple[list[Array], Array]:
    del preact
    bn = lambda name: BatchNorm(groups=self.bn_groups, name=name)
    x = nn.relu(bn("conv1.1")(conv(self.channels[0], 3, 2, 1, name="conv1.0")(x), train))
    x = _max_pool_3x3_s2(x)
    feats = [x]
    for stage, (repeats, out) in enumerate(zip(self.repeats, self.channels[1:4]), start=2):
      for i in range(repeats):
        x = _ShuffleInvertedResidual(out, 2 if i == 0 else 1, self.bn_groups, name=f"stage{stage}.{i}")(x, train)
      feats.append(x)
    x = nn.relu(bn("conv5.1")(conv(self.channels[4], 1, name="conv5.0")(x), train))
    pooled = jnp.mean(x, axis=(1, 2))
    feats.append(pooled)
    return feats, dense(self.num_classes, self.channels[4], name="fc")(pooled)


# (channels or 'M' for a 2x2 max-pool, feature split indices into the module list) of vgg*_bn.
VGG_IMAGENET = {
    "vgg8_imagenet": ((64, "M", 128, "M", 256, "M", 512, "M", 512, "M"), (0, 2, 4, 6, 8)),
    "vgg11_imagenet": ((64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"), (0, 2, 4, 7, 10)),
    "vgg13_imagenet": ((64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"), (0, 3, 6, 9, 12)),
}


class VGGImagenet(nn.Module):
  """The reference's module list (conv, BN, ReLU per layer; max-pools) read in order, features
  tapped at its split indices; AdaptiveAvgPool2d((7, 7)) then a 3-layer classifier."""
  cfg: Sequence
  split: Sequence[int]
  num_classes: int
  bn_groups: int = 1

  @nn.compact
  def __call__(self, x: Array, train: bool = False, preact: bool = False) -> tuple[list[Array], Array]:
    del preact
    ops, relus = [], set()
    for v in self.cfg:
      if v == "M":
        ops.append(lambda x, _: nn.max_pool(x, (2, 2), strides=(2, 2)))
      else:
        i = len(ops)
        ops.append(lambda x, _, v=v, i=i: conv(v, 3, 1, 1, use_bias=True, name=f"features.{i}")(x))
        ops.append(lambda x, t, i=i: BatchNorm(groups=self.bn_groups, name=f"features.{i + 1}")(x, t))
        relus.add(len(ops))
        ops.append(lambda x, _: nn.relu(x))
    feats = []
    for i, op in enumerate(ops):
      if i in self.split[1:]:
        # The reference's ReLUs are in place: a tap just before one holds its output.
        feats.append(nn.relu(x) if i in relus else x)
      x = op(x, train)
    feats.append(x)
    pooled = adaptive_avg_pool(x, 7)
    flat = jnp.transpose(pooled, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # PyTorch's flatten order
    feats.append(flat)
    h = nn.relu(dense(4096, flat.shape[-1], name="classifier.0")(flat))
    h = nn.relu(dense(4096, 4096, name="classifier.3")(h))
    return feats, dense(self.num_classes, 4096, name="classifier.6")(h)
