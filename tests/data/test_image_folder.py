"""mmkd_jax.data.image_folder: ``--config.dataset=folder:<dir>`` on generated images of mixed sizes
and modes, both layouts, prepared once and again when the folder changes; a student trains on it
through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from mmkd_jax import config as config_lib
from mmkd_jax.data import image_folder, sources

from helpers import DIGITS, ROOT, digits_smoke

COLOURS = {"apple": (200, 30, 30), "leaf": (30, 180, 40), "sky": (40, 60, 210)}


def _write_images(directory, per_class, seed=0):
  """Images of each class (its colour plus noise) of different sizes, modes and formats."""
  rng = np.random.default_rng(seed)
  for name, colour in COLOURS.items():
    os.makedirs(directory / name, exist_ok=True)
    for i in range(per_class):
      h, w = [(40, 30), (64, 64), (20, 50)][i % 3]
      pixels = np.clip(np.array(colour) + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
      image = Image.fromarray(pixels)
      if i % 4 == 3:
        image = image.convert("L")  # a grey one: converted to RGB
      image.save(directory / name / f"{i:03d}.{'png' if i % 2 else 'jpg'}")


def test_a_class_folder_layout_is_resized_and_split_by_a_fixed_hash(tmp_path):
  _write_images(tmp_path / "pics", 20)
  layout = image_folder.scan(str(tmp_path / "pics"), 16)
  assert layout.classes == ("apple", "leaf", "sky")
  n_test = len(layout.splits["test"])
  assert len(layout.splits["train"]) + n_test == 60 and 0 < n_test < 30  # about a fifth held out
  config = config_lib.validate(digits_smoke(dataset=f"folder:{tmp_path / 'pics'}", image_size=16,
                                            data_dir=str(tmp_path / "tfds"), method="none", teachers=[]))
  dataset = sources.open_dataset(config)
  assert dataset.spec.image_shape == (16, 16, 3) and dataset.spec.num_classes == 3
  assert (len(dataset.train), len(dataset.test)) == (60 - n_test, n_test)
  records = sources.read_records(dataset.train, np.arange(len(dataset.train)), dataset.spec)
  means = [records["image"][records["label"] == k].mean(axis=(0, 1, 2)) for k in range(3)]
  for k, colour in enumerate(COLOURS.values()):  # each class keeps its colour through the resize
    assert np.argmax(means[k]) == np.argmax(colour), (k, means[k])
  # adding an image elsewhere never moves the held-out ones
  _write_images(tmp_path / "pics" / "apple", 0)
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "pics" / "apple" / "new.png")
  again = image_folder.scan.__wrapped__(str(tmp_path / "pics"), 16)
  assert set(layout.splits["test"]) <= set(again.splits["test"]) and again.fingerprint != layout.fingerprint


def test_train_and_test_folders_are_the_splits_and_bad_layouts_name_the_fix(tmp_path):
  _write_images(tmp_path / "d" / "train", 6)
  _write_images(tmp_path / "d" / "test", 3, seed=1)
  layout = image_folder.scan(str(tmp_path / "d"))
  assert (len(layout.splits["train"]), len(layout.splits["test"])) == (18, 9)
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="expected a folder per class .*has no class folders"):
    image_folder.scan(str(tmp_path / "empty"))
  with pytest.raises(FileNotFoundError, match="is not a directory"):
    image_folder.scan(str(tmp_path / "nowhere"))


def test_a_student_trains_on_a_folder_and_a_changed_folder_is_prepared_again(tmp_path):
  """The real CLI: prepared on first use (one line, no TFDS banner), trained; after an image is
  added the folder is prepared again under a new fingerprint, and resuming the finished run on the
  changed contents is refused naming them."""
  _write_images(tmp_path / "pics", 12)
  env = dict(os.environ, TFDS_DATA_DIR=str(tmp_path / "tfds"))
  env.pop("XLA_FLAGS", None)
  args = [sys.executable, "-m", "mmkd_jax.main", "--config", f"{DIGITS}:none,smoke", "--workdir", str(tmp_path / "run"),
          f"--config.dataset=folder:{tmp_path / 'pics'}", "--config.mode=distill", "--config.batch_size=8", "--config.eval_batch_size=4"]
  done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "preparing dataset 'folder:" in done.stdout and "Downloading and preparing" not in done.stdout
  assert "" not in done.stdout.splitlines(), done.stdout  # nor the banner's newline
  with open(tmp_path / "run" / "summary.json") as f:
    assert json.load(f)["status"] == "finished"
  prepared = os.listdir(tmp_path / "tfds" / "image_folder")
  assert len(prepared) == 1 and prepared[0].startswith("pics-")
  time.sleep(0.01)
  Image.fromarray(np.full((9, 9, 3), 200, np.uint8)).save(tmp_path / "pics" / "apple" / "late.png")
  done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert done.returncode == 2 and "the dataset's contents" in done.stderr and "the image folder changed" in done.stderr
  assert len(os.listdir(tmp_path / "tfds" / "image_folder")) == 2
