"""Wide ResNets of the reference zoo (wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2)."""

from __future__ import annotations

import flax.linen as nn
import jax

from mmkd_jax.models.layers import BatchNorm, global_avg_pool_flatten, conv, dense

Array = jax.Array


class WideBasicBlock(nn.Module):
  """Pre-activation block. When the width changes, the shortcut conv sees relu(bn1(x))."""

  in_planes: int
  out_planes: int
  stride: int
  bn_groups: int = 1

  def setup(self):
    self.bn1 = BatchNorm(groups=self.bn_groups)
    self.conv1 = conv(self.out_planes, 3, self.stride, 1)
    self.bn2 = BatchNorm(groups=self.bn_groups)
    self.conv2 = conv(self.out_planes, 3, 1, 1)
    if self.in_planes != self.out_planes:
      self.convShortcut = conv(self.out_planes, 1, self.stride, 0)

  def __call__(self, x: Array, train: bool) -> Array:
    activated = nn.relu(self.bn1(x, train))
    out = self.conv1(activated)
    out = self.conv2(nn.relu(self.bn2(out, train)))
    if self.in_planes == self.out_planes:
      return x + out
    return self.convShortcut(activated) + out


class WideResNet(nn.Module):
  """``[conv1 x, block1, block2, relu(bn1(block3)), pooled]`` features, then ``fc``.

  ``preact=True`` reproduces the reference exactly, quirks included: f1 and f2 are passed
  through the *next* group's first ``bn1`` and f3 through ``bn1`` a second time (which,
  in train mode, updates those running statistics twice).
  """

  depth: int
  widen_factor: int
  num_classes: int
  bn_groups: int = 1

  @nn.compact
  def __call__(self, x: Array, train: bool = False, preact: bool = False) -> tuple[list[Array], Array]:
    if (self.depth - 4) % 6:
      raise ValueError(f"WideResNet depth must be 6n+4, got {self.depth}")
    n = (self.depth - 4) // 6
    widths = [16, 16 * self.widen_factor, 32 * self.widen_factor, 64 * self.widen_factor]
    blocks = [[WideBasicBlock(widths[g] if i == 0 else widths[g + 1], widths[g + 1],
                              (1, 2, 2)[g] if i == 0 else 1, self.bn_groups,
                              name=f"block{g + 1}.layer.{i}") for i in range(n)] for g in range(3)]
    bn1 = BatchNorm(groups=self.bn_groups, name="bn1")

    out = conv(widths[0], 3, 1, 1, name="conv1")(x)
    feats = [out]
    for group in blocks:
      for block in group:
        out = block(out, train)
      feats.append(out)
    out = nn.relu(bn1(out, train))
    feats[3] = out
    out = global_avg_pool_flatten(out)
    feats.append(out)
    logits = dense(self.num_classes, widths[3], name="fc")(out)
    if preact:
      feats[1] = blocks[1][0].bn1(feats[1], train)
      feats[2] = blocks[2][0].bn1(feats[2], train)
      feats[3] = bn1(feats[3], train)
    return feats, logits
