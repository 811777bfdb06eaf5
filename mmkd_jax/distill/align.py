"""Per-teacher feature alignment (the reference's ``MatchFeature`` / ``Embed``).

Regressor t maps the student's feat[-2] into teacher t's channel space: a 1x1 conv (with
bias) + BatchNorm + ReLU, or with ``deep=True`` the 1x1 -> 3x3 -> 1x1 bottleneck (width
halved). The larger spatial map is average-pooled down to the smaller first. BatchNorm here
always uses batch statistics, as in the reference, where the module is never put in eval mode.
Names mirror the PyTorch modules (``regressor0.transfer.0`` ...) for checkpoint conversion.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmkd_jax.distill.losses import per_sample_mse, pool_to_common_size
from mmkd_jax.models.layers import BatchNorm, conv

Array = jax.Array


class Embed(nn.Module):
  out_channels: int
  deep: bool = False
  bn_groups: int = 1
  torch_init: bool = False  # PyTorch's default conv init (the originals'), not kaiming-normal + zero bias

  @nn.compact
  def __call__(self, x: Array, train: bool = True) -> Array:
    def conv_bn_relu(x, features, kernel, index):
      x = conv(features, kernel, 1, kernel // 2, use_bias=True, name=f"transfer.{index}",
               torch_default_from=x.shape[-1] if self.torch_init else 0)(x)
      x = BatchNorm(groups=self.bn_groups, name=f"transfer.{index + 1}")(x, train)
      return nn.relu(x)
    if not self.deep:
      return conv_bn_relu(x, self.out_channels, 1, 0)
    mid = x.shape[-1] // 2
    x = conv_bn_relu(x, mid, 1, 0)
    x = conv_bn_relu(x, mid, 3, 3)
    return conv_bn_relu(x, self.out_channels, 1, 6)


class FeatureAligner(nn.Module):
  """Returns the per-sample, per-teacher alignment MSE, shape (B, T)."""

  teacher_channels: Sequence[int]
  deep: bool = False
  bn_groups: int = 1
  torch_init: bool = False

  @nn.compact
  def __call__(self, student_feat: Array, teacher_feats: Sequence[Array], train: bool = True) -> Array:
    if len(teacher_feats) != len(self.teacher_channels):
      raise ValueError(f"FeatureAligner built for {len(self.teacher_channels)} teachers got "
                       f"{len(teacher_feats)} teacher feature maps")
    losses = []
    for t, (channels, teacher_feat) in enumerate(zip(self.teacher_channels, teacher_feats)):
      if teacher_feat.shape[-1] != channels:
        raise ValueError(f"teacher {t} feature has {teacher_feat.shape[-1]} channels, the "
                         f"aligner expects {channels}")
      source, target = pool_to_common_size(student_feat, teacher_feat.astype(student_feat.dtype))
      projected = Embed(channels, self.deep, self.bn_groups, self.torch_init, name=f"regressor{t}")(source, train)
      losses.append(per_sample_mse(projected, target))
    return jnp.stack(losses, axis=-1)
