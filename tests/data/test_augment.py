"""Augmentation from (seed, index, replay): reproducible, different across replays, a padded crop."""
from __future__ import annotations


import jax.numpy as jnp
import numpy as np

from mmkd_jax.data import augment


def test_augmentation_is_reproducible_and_differs_across_replays():
  images = jnp.asarray(np.random.default_rng(0).integers(0, 255, (16, 32, 32, 3)), jnp.uint8)
  index = jnp.arange(16) + 100
  a = augment.augment(images, index, 0, seed=5)
  b = augment.augment(images, index, 0, seed=5)
  c = augment.augment(images, index, 1, seed=5)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(np.asarray(a), np.asarray(c))
  # Per-example: the view of example i does not depend on the other examples of the batch.
  single = augment.augment(images[3:4], index[3:4], 0, seed=5)
  np.testing.assert_array_equal(single[0], a[3])
  dy, dx, flip = augment.crop_flip_params(5, index, 0)
  assert int(dy.min()) >= 0 and int(dy.max()) <= 8 and int(dx.max()) <= 8
  assert 0 < int(flip.sum()) < 16


def test_augmentation_is_a_padded_crop():
  image = jnp.arange(32 * 32 * 3, dtype=jnp.int32).reshape(1, 32, 32, 3).astype(jnp.uint8)
  out = np.asarray(augment.augment(image, jnp.array([7]), 2, seed=1))[0]
  dy, dx, flip = (int(v[0]) for v in augment.crop_flip_params(1, jnp.array([7]), 2))
  padded = np.pad(np.asarray(image[0]), ((4, 4), (4, 4), (0, 0)))
  expected = padded[dy:dy + 32, dx:dx + 32]
  np.testing.assert_array_equal(out, expected[:, ::-1] if flip else expected)
