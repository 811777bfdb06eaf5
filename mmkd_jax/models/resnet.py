"""CIFAR ResNets of the reference zoo (resnet8 ... resnet110, resnet8x4, resnet32x4)."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from mmkd_jax.models.layers import BatchNorm, global_avg_pool_flatten, conv, dense

Array = jax.Array


class BasicBlock(nn.Module):
  """3x3-3x3 residual block; returns (output, pre-ReLU sum) so the last one can be tapped."""

  planes: int
  stride: int = 1
  downsample: bool = False
  bn_groups: int = 1

  @nn.compact
  def __call__(self, x: Array, train: bool) -> tuple[Array, Array]:
    bn = lambda name: BatchNorm(groups=self.bn_groups, name=name)
    out = conv(self.planes, 3, self.stride, 1, name="conv1")(x)
    out = nn.relu(bn("bn1")(out, train))
    out = conv(self.planes, 3, 1, 1, name="conv2")(out)
    out = bn("bn2")(out, train)
    residual = x
    if self.downsample:
      residual = conv(self.planes, 1, self.stride, 0, name="downsample.0")(x)
      residual = bn("downsample.1")(residual, train)
    preact = out + residual
    return nn.relu(preact), preact


class ResNet(nn.Module):
  """``[relu(bn1(conv1 x)), layer1, layer2, layer3, pooled]`` features, then ``fc``.

  ``preact=True`` replaces each layer's output by its last block's pre-ReLU sum.
  """

  depth: int
  num_filters: Sequence[int]
  num_classes: int
  bn_groups: int = 1

  @nn.compact
  def __call__(self, x: Array, train: bool = False, preact: bool = False) -> tuple[list[Array], Array]:
    if (self.depth - 2) % 6:
      raise ValueError(f"ResNet depth must be 6n+2, got {self.depth}")
    blocks_per_layer = (self.depth - 2) // 6
    x = conv(self.num_filters[0], 3, 1, 1, name="conv1")(x)
    x = nn.relu(BatchNorm(groups=self.bn_groups, name="bn1")(x, train))
    feats = [x]
    in_planes = self.num_filters[0]
    for layer, (planes, stride) in enumerate(zip(self.num_filters[1:], (1, 2, 2)), start=1):
      for i in range(blocks_per_layer):
        s = stride if i == 0 else 1
        block = BasicBlock(planes, s, downsample=(s != 1 or in_planes != planes),
                           bn_groups=self.bn_groups, name=f"layer{layer}.{i}")
        x, pre = block(x, train)
        in_planes = planes
      feats.append(pre if preact else x)
    x = global_avg_pool_flatten(x)
    feats.append(x)
    logits = dense(self.num_classes, self.num_filters[3], name="fc")(x)
    return feats, logits
