"""MIT67 and TinyImageNet from tiny fake copies of their official directory layouts; Stanford Dogs
and CUB through TFDS mock data; each dataset's smoke config end to end."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from mmkd_jax.training import run as run_lib
from mmkd_jax import config as config_lib
from mmkd_jax.data import sources
from mmkd_jax.teachers import stages as teacher_stages

from helpers import ROOT


def _jpeg(path, shape, seed):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)).save(path)


def fake_mit67(root, per_class=(12, 4)):
  lines = {"TrainImages.txt": [], "TestImages.txt": []}
  for c, name in enumerate(("bakery", "bar", "library")):
    for i in range(sum(per_class)):
      rel = f"{name}/img{i}.jpg"
      _jpeg(os.path.join(root, "Images", rel), (40 + 3 * i, 50, 3), 100 * c + i)
      lines["TrainImages.txt" if i < per_class[0] else "TestImages.txt"].append(rel)
  for listing, rows in lines.items():
    with open(os.path.join(root, listing), "w") as f:
      f.write("\n".join(rows) + "\n")


def fake_tiny_imagenet(root, per_class=12):
  wnids = ["n01443537", "n01629819"]
  with open(os.path.join(os.makedirs(root, exist_ok=True) or root, "wnids.txt"), "w") as f:
    f.write("\n".join(wnids) + "\n")
  rows = []
  for c, wnid in enumerate(wnids):
    for i in range(per_class):
      _jpeg(os.path.join(root, "train", wnid, "images", f"{wnid}_{i}.JPEG"), (64, 64, 3), 10 * c + i)
    for i in range(4):
      name = f"val_{c * 4 + i}.JPEG"
      _jpeg(os.path.join(root, "val", "images", name), (64, 64, 3), 500 + c * 4 + i)
      rows.append(f"{name}\t{wnid}\t0\t0\t63\t63")
  with open(os.path.join(root, "val", "val_annotations.txt"), "w") as f:
    f.write("\n".join(rows) + "\n")


def _config(path, arg, tmp_path, **fields):
  return config_lib.load(os.path.join(ROOT, "configs", path), arg, {
      "data_dir": str(tmp_path / "tfds"), "teacher_dir": str(tmp_path / "teachers"), **fields})


def test_folder_builders_read_the_official_layouts(tmp_path):
  fake_mit67(str(tmp_path / "mit67"))
  fake_tiny_imagenet(str(tmp_path / "tiny"))
  for name, source_dir, train_n, test_n, size in (("mit67", "mit67", 36, 12, 224), ("tiny_imagenet", "tiny", 24, 8, 32)):
    c = config_lib.base_config()
    config_lib.set_fields(c, {"dataset": name, "data_dir": str(tmp_path / "tfds"),
                              "dataset_source_dir": str(tmp_path / source_dir)})
    dataset = sources.open_dataset(c)
    assert (len(dataset.train), len(dataset.test)) == (train_n, test_n)
    assert dataset.spec.image_shape == (size, size, 3) and dataset.spec.host_transform
    train_view = sources.read_records(dataset.train, np.arange(4), dataset.spec, (0, 1))
    eval_view = sources.read_records(dataset.test, np.arange(4), dataset.spec)
    assert train_view["image"].shape == eval_view["image"].shape == (4, size, size, 3)
    again = sources.read_records(dataset.train, np.arange(4), dataset.spec, (0, 1))
    np.testing.assert_array_equal(train_view["image"], again["image"])  # a pure function of (seed, index, replay)


def test_a_missing_manual_directory_names_the_dataset_layout_and_field(tmp_path):
  c = config_lib.base_config()
  config_lib.set_fields(c, {"dataset": "mit67", "data_dir": str(tmp_path / "tfds"),
                            "dataset_source_dir": str(tmp_path / "nowhere")})
  with pytest.raises(FileNotFoundError, match=r"mit67: .*nowhere.* config.dataset_source_dir .*TrainImages.txt"):
    sources.open_dataset(c)


def _pipeline(config):
  config = config_lib.validate(config)
  teacher_stages.train_missing_teachers(config)
  loaded = teacher_stages.load_teachers(config)
  if config.teacher_source == "precomputed":
    teacher_stages.precompute(config, loaded)
  return run_lib.train_and_evaluate(config, config.teacher_dir + "/../run", loaded,
                                  teacher_stages.open_cache(config, loaded), quiet=True)


@pytest.mark.parametrize("dataset", ["stanford_dogs", pytest.param("cub_200_2011", marks=pytest.mark.slow)])
def test_tfds_finegrained_smoke_configs_run_on_mock_data(tmp_path, dataset):
  # (mock_data replaces every TFDS builder, the teacher cache's too: teachers run online here)
  with tfds.testing.mock_data(num_examples=16):
    summary = _pipeline(_config("finegrained.py", f"dataset={dataset},method=aver,smoke", tmp_path,
                                teacher_source="online"))
  assert summary["status"] == "finished" and summary["final_top1"] is not None


@pytest.mark.slow  # ~80 s; the default suite reads both layouts (test_folder_builders_read_the_official_layouts)
def test_mit67_and_tiny_imagenet_smoke_configs_run_end_to_end(tmp_path):
  # AVER keeps this in the default suite's budget; MMKD's meta step runs in the digits smoke tests.
  fake_mit67(str(tmp_path / "mit67"))
  fake_tiny_imagenet(str(tmp_path / "tiny"))
  a = _pipeline(_config("finegrained.py", "dataset=mit67,method=aver,smoke", tmp_path / "a",
                        dataset_source_dir=str(tmp_path / "mit67")))
  b = _pipeline(_config("tinyimagenet.py", "method=aver,smoke", tmp_path / "b", dataset_source_dir=str(tmp_path / "tiny")))
  assert a["status"] == b["status"] == "finished" and b["method"] == "aver"
