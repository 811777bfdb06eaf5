"""MobileNetV2 for CIFAR as in the reference zoo (``mobile_half``: width 0.5, expansion 6)."""

from __future__ import annotations

import flax.linen as nn
import jax

from mmkd_jax.models.layers import BatchNorm, global_avg_pool_flatten, conv, dense

Array = jax.Array

# (expansion, channels, blocks, first stride); expansion None means the network's `expansion`.
_SETTINGS = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
             (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1))


class InvertedResidual(nn.Module):
  """1x1 expand - 3x3 depthwise - 1x1 linear projection; residual when shapes allow."""

  out_planes: int
  stride: int
  expansion: int
  bn_groups: int = 1

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    bn = lambda name: BatchNorm(groups=self.bn_groups, name=name)
    hidden = x.shape[-1] * self.expansion
    out = nn.relu(bn("conv.1")(conv(hidden, 1, name="conv.0")(x), train))
    out = conv(hidden, 3, self.stride, 1, groups=hidden, name="conv.3")(out)
    out = nn.relu(bn("conv.4")(out, train))
    out = bn("conv.7")(conv(self.out_planes, 1, name="conv.6")(out), train)
    if self.stride == 1 and x.shape[-1] == self.out_planes:
      return x + out
    return out


class MobileNetV2(nn.Module):
  """Features ``[conv1, blocks1, blocks2, blocks4, conv2 (1280 ch), pooled]``, then ``classifier``.

  As in MMKD's copy of the zoo, feat[-2] is the 1x1 ``conv2`` output (1280 channels), which
  is what the feature weighting and alignment see. ``preact`` is ignored (as the reference).
  """

  num_classes: int
  expansion: int = 6
  width_mult: float = 0.5
  bn_groups: int = 1

  @nn.compact
  def __call__(self, x: Array, train: bool = False, preact: bool = False) -> tuple[list[Array], Array]:
    del preact
    bn = lambda name: BatchNorm(groups=self.bn_groups, name=name)
    out = nn.relu(bn("conv1.1")(conv(int(32 * self.width_mult), 3, 2, 1, name="conv1.0")(x), train))
    feats = [out]
    for g, (t, c, n, s) in enumerate(_SETTINGS):
      for i in range(n):
        out = InvertedResidual(int(c * self.width_mult), s if i == 0 else 1,
                               self.expansion if t is None else t, self.bn_groups,
                               name=f"blocks.{g}.{i}")(out, train)
      if g in (1, 2, 4):
        feats.append(out)
    last_channels = int(1280 * self.width_mult) if self.width_mult > 1.0 else 1280
    out = nn.relu(bn("conv2.1")(conv(last_channels, 1, name="conv2.0")(out), train))
    feats.append(out)
    # The reference's AvgPool2d(input_size // 16, ceil_mode=True) covers the whole final map.
    out = global_avg_pool_flatten(out)
    feats.append(out)
    logits = dense(self.num_classes, last_channels, name="classifier.0")(out)
    return feats, logits
