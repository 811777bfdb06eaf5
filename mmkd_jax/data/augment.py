"""Deterministic augmentation: zero-pad + random crop back to the image size + horizontal flip.

The padding scales with the image (``DatasetSpec.crop_padding``, by default height // 8: 4 at
32x32 as the reference, 3 at 28x28). The crop offsets and the flip of an example are a pure function of (seed, example index,
replay), computed on device with counter-based (threefry) keys, so a precomputed teacher
output and the student's view of the same (index, replay) always see the same pixels.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


def crop_flip_params(seed: int | Array, index: Array, replay: int | Array, pad: int = 4
                     ) -> tuple[Array, Array, Array]:
  """Per-example (row offset, column offset, flip) in [0, 2*pad]^2 x {0, 1}; ``replay`` is a
  scalar or one value per example."""
  base = jax.random.key(seed)
  index = jnp.asarray(index, jnp.uint32)
  replay = jnp.broadcast_to(jnp.asarray(replay, jnp.uint32), index.shape)

  def one(i, r):
    k_crop, k_flip = jax.random.split(jax.random.fold_in(jax.random.fold_in(base, r), i))
    offsets = jax.random.randint(k_crop, (2,), 0, 2 * pad + 1)
    return offsets[0], offsets[1], jax.random.bernoulli(k_flip)

  return jax.vmap(one)(index, replay)


def augment(images: Array, index: Array, replay: int | Array, seed: int | Array, pad: int = 4,
            flip: bool = True) -> Array:
  """Zero-pads by ``pad`` (like torchvision's RandomCrop(padding=pad) on the uint8 image), crops
  back to the original size at the per-example offsets, and flips where drawn (if ``flip``)."""
  n, h, w, c = images.shape
  if pad == 0 and not flip:  # cut on the host (data/transforms.py): nothing to do here
    return images
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  dy, dx, flips = crop_flip_params(seed, index, replay, pad)

  def crop(img, y, x, f):
    out = jax.lax.dynamic_slice(img, (y, x, 0), (h, w, c))
    return jnp.where(f, out[:, ::-1, :], out) if flip else out

  return jax.vmap(crop)(padded, dy, dx, flips)


def augment_for(spec, images: Array, index: Array, replay: int | Array, seed: int | Array) -> Array:
  """``augment`` with the dataset's padding and flip (``spec``: a ``DatasetSpec``)."""
  return augment(images, index, replay, seed, spec.crop_padding, spec.flip)


def normalize(images: Array, mean: Sequence[float], std: Sequence[float], dtype=jnp.float32) -> Array:
  """uint8 [0, 255] -> (x / 255 - mean) / std, like ToTensor + Normalize."""
  x = images.astype(dtype) / 255.0
  return (x - jnp.asarray(mean, dtype)) / jnp.asarray(std, dtype)
