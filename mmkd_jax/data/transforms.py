"""Host-side views of variable-size images (the 224x224 datasets, TinyImageNet), as the
reference's torchvision transforms, with every random choice a pure function of
(seed, example index, replay), so a cached teacher output and the student's view still match.

    train: RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3)) + horizontal flip
    eval:  Resize(resize) (shorter side) + CenterCrop(size)

Resizing is PIL's bilinear with antialiasing, as torchvision's on PIL images.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image


def random_resized_crop_box(height: int, width: int, seed: int, index: int, replay: int,
                            scale: tuple[float, float] = (0.08, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int, bool]:
  """torchvision's RandomResizedCrop.get_params (10 tries, then the centred crop of the
  clamped ratio) and a flip, from ``numpy.random.default_rng([seed, index, replay])``:
  (top, left, crop height, crop width, flip)."""
  rng = np.random.default_rng([seed, index, replay])
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  box = None
  for _ in range(10):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      box = (int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w)
      break
  if box is None:
    in_ratio = width / height
    if in_ratio < ratio[0]:
      w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
      h, w = height, int(round(height * ratio[1]))
    else:
      w, h = width, height
    box = ((height - h) // 2, (width - w) // 2, h, w)
  return (*box, bool(rng.integers(0, 2)))


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  squeeze = image.ndim == 3 and image.shape[-1] == 1
  pil = Image.fromarray(image[..., 0] if squeeze else image)
  out = np.asarray(pil.resize((width, height), Image.BILINEAR))
  return out[..., None] if squeeze else out


def train_view(image: np.ndarray, size: int, seed: int, index: int, replay: int) -> np.ndarray:
  top, left, h, w, flip = random_resized_crop_box(image.shape[0], image.shape[1], seed, index, replay)
  out = _resize(np.ascontiguousarray(image[top:top + h, left:left + w]), size, size)
  return out[:, ::-1] if flip else out


def eval_view(image: np.ndarray, size: int, resize: int) -> np.ndarray:
  """Resize the shorter side to ``resize`` (torchvision's Resize(int)), then the centred
  ``size`` x ``size`` crop."""
  h, w = image.shape[:2]
  if h <= w:
    new_h, new_w = resize, int(resize * w / h)
  else:
    new_h, new_w = int(resize * h / w), resize
  out = _resize(image, new_h, new_w)
  top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
  return np.ascontiguousarray(out[top:top + size, left:left + size])
