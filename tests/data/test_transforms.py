"""Host-side views of variable-size images: RandomResizedCrop + flip from (seed, index, replay),
and Resize + CenterCrop, as torchvision computes them."""

from __future__ import annotations

import numpy as np

from mmkd_jax.data import transforms


def test_random_resized_crop_is_a_pure_function_within_torchvisions_bounds():
  boxes = {}
  for index in range(200):
    box = transforms.random_resized_crop_box(300, 400, seed=7, index=index, replay=0)
    assert box == transforms.random_resized_crop_box(300, 400, seed=7, index=index, replay=0)
    top, left, h, w, _ = box
    assert 0 <= top and top + h <= 300 and 0 <= left and left + w <= 400
    assert 0.08 * 300 * 400 * 0.9 <= h * w <= 300 * 400
    assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1 or (h, w) == (300, 400)
    boxes[index] = box
  assert transforms.random_resized_crop_box(300, 400, 7, 3, 1) != boxes[3]  # another replay, another view
  flips = [b[-1] for b in boxes.values()]
  assert 50 < sum(flips) < 150


def test_train_view_is_the_resized_crop_flipped_where_drawn():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (60, 80, 3)).astype(np.uint8)
  for index in range(6):
    view = transforms.train_view(image, 32, 1, index, 2)
    top, left, h, w, flip = transforms.random_resized_crop_box(60, 80, 1, index, 2)
    expected = transforms._resize(np.ascontiguousarray(image[top:top + h, left:left + w]), 32, 32)  # pylint: disable=protected-access
    np.testing.assert_array_equal(view, expected[:, ::-1] if flip else expected)
    assert view.shape == (32, 32, 3) and view.dtype == np.uint8


def test_eval_view_resizes_the_shorter_side_then_crops_the_centre():
  image = np.arange(256 * 300 * 3, dtype=np.int64).reshape(256, 300, 3).astype(np.uint8)
  view = transforms.eval_view(image, 224, 256)  # shorter side already 256: a pure centre crop
  np.testing.assert_array_equal(view, image[16:240, 38:262])
  tall = np.zeros((500, 100, 3), np.uint8)
  assert transforms.eval_view(tall, 224, 256).shape == (224, 224, 3)
