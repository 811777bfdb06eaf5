"""ShuffleNetV1 (groups 3) and ShuffleNetV2 (1x) for CIFAR, as in the reference zoo."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmkd_jax.models.layers import BatchNorm, global_avg_pool_flatten, channel_shuffle, conv, dense

Array = jax.Array


def _avg_pool_3x3_s2_pad1(x: Array) -> Array:
  """AvgPool2d(3, stride=2, padding=1) with count_include_pad=True (always divides by 9)."""
  summed = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 2, 2, 1),
                                 ((0, 0), (1, 1), (1, 1), (0, 0)))
  return summed / 9.0


class ShuffleV1Bottleneck(nn.Module):
  """Grouped 1x1 - shuffle - depthwise 3x3 - grouped 1x1; stride 2 concatenates an avg-pooled x."""

  out_planes: int
  stride: int
  groups: int
  bn_groups: int = 1

  @nn.compact
  def __call__(self, x: Array, train: bool) -> tuple[Array, Array]:
    bn = lambda name: BatchNorm(groups=self.bn_groups, name=name)
    mid = self.out_planes // 4
    first_groups = 1 if x.shape[-1] == 24 else self.groups
    out = nn.relu(bn("bn1")(conv(mid, 1, groups=first_groups, name="conv1")(x), train))
    out = channel_shuffle(out, first_groups)
    out = nn.relu(bn("bn2")(conv(mid, 3, self.stride, 1, groups=mid, name="conv2")(out), train))
    out = bn("bn3")(conv(self.out_planes, 1, groups=self.groups, name="conv3")(out), train)
    if self.stride == 2:
      preact = jnp.concatenate([out, _avg_pool_3x3_s2_pad1(x)], axis=-1)
    else:
      preact = out + x
    return nn.relu(preact), preact


class ShuffleNetV1(nn.Module):
  """``[relu(bn1(conv1 x)), layer1, layer2, layer3, pooled]`` features, then ``linear``."""

  num_classes: int
  out_planes: Sequence[int] = (240, 480, 960)
  num_blocks: Sequence[int] = (4, 8, 4)
  groups: int = 3
  bn_groups: int = 1

  @nn.compact
  def __call__(self, x: Array, train: bool = False, preact: bool = False) -> tuple[list[Array], Array]:
    out = nn.relu(BatchNorm(groups=self.bn_groups, name="bn1")(conv(24, 1, name="conv1")(x), train))
    feats = [out]
    in_planes = 24
    for layer, (planes, blocks) in enumerate(zip(self.out_planes, self.num_blocks), start=1):
      for i in range(blocks):
        block_out = planes - in_planes if i == 0 else planes
        out, pre = ShuffleV1Bottleneck(block_out, 2 if i == 0 else 1, self.groups, self.bn_groups,
                                       name=f"layer{layer}.{i}")(out, train)
        in_planes = planes
      feats.append(pre if preact else out)
    out = global_avg_pool_flatten(out)
    feats.append(out)
    logits = dense(self.num_classes, self.out_planes[-1], name="linear")(out)
    return feats, logits


class ShuffleV2BasicBlock(nn.Module):
  """Keeps the first half of the channels, transforms the second, concatenates, shuffles."""

  bn_groups: int = 1

  @nn.compact
  def __call__(self, x: Array, train: bool) -> tuple[Array, Array]:
    bn = lambda name: BatchNorm(groups=self.bn_groups, name=name)
    c = x.shape[-1] // 2
    x1, x2 = x[..., :c], x[..., c:]
    out = nn.relu(bn("bn1")(conv(c, 1, name="conv1")(x2), train))
    out = bn("bn2")(conv(c, 3, 1, 1, groups=c, name="conv2")(out), train)
    out = bn("bn3")(conv(c, 1, name="conv3")(out), train)
    preact = jnp.concatenate([x1, out], axis=-1)
    return channel_shuffle(jnp.concatenate([x1, nn.relu(out)], axis=-1), 2), preact


class ShuffleV2DownBlock(nn.Module):
  """Two stride-2 branches, each producing half of the output channels."""

  out_planes: int
  bn_groups: int = 1

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    bn = lambda name: BatchNorm(groups=self.bn_groups, name=name)
    cin, mid = x.shape[-1], self.out_planes // 2
    left = bn("bn1")(conv(cin, 3, 2, 1, groups=cin, name="conv1")(x), train)
    left = nn.relu(bn("bn2")(conv(mid, 1, name="conv2")(left), train))
    right = nn.relu(bn("bn3")(conv(mid, 1, name="conv3")(x), train))
    right = bn("bn4")(conv(mid, 3, 2, 1, groups=mid, name="conv4")(right), train)
    right = nn.relu(bn("bn5")(conv(mid, 1, name="conv5")(right), train))
    return channel_shuffle(jnp.concatenate([left, right], axis=-1), 2)


class ShuffleNetV2(nn.Module):
  """``[relu(bn1(conv1 x)), layer1, layer2, relu(bn2(conv2 layer3)), pooled]``, then ``linear``.

  ``preact=True`` gives the last basic block's pre-activation ``cat[x1, bn3(...)]`` for
  layers 1-3; for layer 3 that is the 464-channel map, not the 1024-channel conv2 output.
  """

  num_classes: int
  out_channels: Sequence[int] = (116, 232, 464, 1024)
  num_blocks: Sequence[int] = (3, 7, 3)
  bn_groups: int = 1

  @nn.compact
  def __call__(self, x: Array, train: bool = False, preact: bool = False) -> tuple[list[Array], Array]:
    out = nn.relu(BatchNorm(groups=self.bn_groups, name="bn1")(conv(24, 1, name="conv1")(x), train))
    feats = [out]
    for layer, (planes, blocks) in enumerate(zip(self.out_channels[:3], self.num_blocks), start=1):
      out = ShuffleV2DownBlock(planes, self.bn_groups, name=f"layer{layer}.0")(out, train)
      for i in range(blocks):
        out, pre = ShuffleV2BasicBlock(self.bn_groups, name=f"layer{layer}.{i + 1}")(out, train)
      feats.append(pre if preact else out)
    out = conv(self.out_channels[3], 1, name="conv2")(out)
    out = nn.relu(BatchNorm(groups=self.bn_groups, name="bn2")(out, train))
    if not preact:
      feats[3] = out
    out = global_avg_pool_flatten(out)
    feats.append(out)
    logits = dense(self.num_classes, self.out_channels[3], name="linear")(out)
    return feats, logits
