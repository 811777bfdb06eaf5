"""VGG with BatchNorm, as in the reference zoo (vgg8, vgg11, vgg13, vgg16, vgg19)."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmkd_jax.models.layers import BatchNorm, conv, dense

Array = jax.Array

# Channels of the convolutions in each of the five blocks.
VGG_CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


def _max_pool(x: Array) -> Array:
  return nn.max_pool(x, (2, 2), strides=(2, 2))


class VGG(nn.Module):
  """``[relu(block0), ..., relu(block4), pooled]`` features, then ``classifier``.

  Each block is conv-BN-ReLU repeated, without the last ReLU (applied outside, as the
  reference does). ``pool3`` only runs on 64x64 inputs, so on 32x32 block3 and block4 both
  see 4x4 maps. ``preact`` is accepted and ignored, as in the reference.
  """

  block_channels: Sequence[Sequence[int]]
  num_classes: int
  bn_groups: int = 1

  @nn.compact
  def __call__(self, x: Array, train: bool = False, preact: bool = False) -> tuple[list[Array], Array]:
    del preact
    input_height = x.shape[1]
    feats = []
    for b, channels in enumerate(self.block_channels):
      if b in (1, 2, 3) or (b == 4 and input_height == 64):
        x = _max_pool(x)
      for i, c in enumerate(channels):
        if i:
          x = nn.relu(x)
        x = conv(c, 3, 1, 1, use_bias=True, name=f"block{b}.{3 * i}")(x)
        x = BatchNorm(groups=self.bn_groups, name=f"block{b}.{3 * i + 1}")(x, train)
      x = nn.relu(x)
      feats.append(x)
    x = jnp.mean(x, axis=(1, 2))
    feats.append(x)
    logits = dense(self.num_classes, x.shape[-1], name="classifier")(x)
    return feats, logits
