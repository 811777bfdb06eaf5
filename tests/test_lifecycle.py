"""Teachers through a run: a trained teacher records what produced it, and a config that asks
for other settings is refused naming each differing field (never silently served)."""

from __future__ import annotations

import os

import pytest

from mmkd_jax import config as config_lib
from mmkd_jax.teachers import lifecycle, save_teacher

from helpers import digits_smoke, random_teachers


def _config(tmp_path, **overrides):
  """The digits smoke config; ``teachers<i>_<field>=value`` sets a teacher entry's field."""
  entries = {k: v for k, v in overrides.items() if k.startswith("teachers")}
  c = digits_smoke(teacher_dir=str(tmp_path), **{k: v for k, v in overrides.items() if k not in entries})
  for key, value in entries.items():
    index, field = key[len("teachers"):].split("_", 1)
    c.teachers[int(index)][field] = value
  return config_lib.validate(c)


def _saved(tmp_path, **overrides):
  config = _config(tmp_path, **overrides)
  for entry, t in zip(config.teachers, random_teachers(("resnet8", "resnet8"))):
    save_teacher(lifecycle.checkpoint_path(config, entry), t.arch, 10, t.variables,
                 {"identity": lifecycle.identity(config, entry)})
  return config


def test_the_same_settings_reuse_the_teacher(tmp_path):
  config = _saved(tmp_path)
  lifecycle.check_trained_teachers(config)
  assert lifecycle.train_missing_teachers(config) == 0.0  # nothing to train


@pytest.mark.parametrize("override, fragment", [
    ({"teacher_training.epochs": 3}, "epochs 1 -> 3"),
    ({"teacher_training.lr": 0.1}, "lr 0.05 -> 0.1"),
    ({"teachers0_seed": 7}, "seed 201 -> 7"),
    ({"batch_size": 32}, "batch_size 64 -> 32"),
    ({"augmentation_seed": 3}, "augmentation_seed 0 -> 3"),
])
def test_a_changed_setting_is_refused_naming_the_field(tmp_path, override, fragment):
  _saved(tmp_path)
  config = _config(tmp_path, **override)
  path = os.path.abspath(lifecycle.checkpoint_path(config, config.teachers[0]))
  for check in (lifecycle.check_trained_teachers, lifecycle.train_missing_teachers, lifecycle.load_teachers):
    with pytest.raises(lifecycle.StaleTeacherError) as raised:
      check(config)
    message = str(raised.value)
    assert fragment in message and path in message
    assert "--config.teachers[0].name=s_resnet8a_2" in message  # train the new one beside it
    assert f"--config.teachers[0].checkpoint={path}" in message  # or accept the existing one


def test_student_settings_do_not_make_a_teacher_stale(tmp_path):
  _saved(tmp_path)
  config = _config(tmp_path, method="aver", lr=0.3, seed=5, epochs=7)
  lifecycle.check_trained_teachers(config)


def test_a_teacher_without_a_record_is_refused_unless_named_explicitly(tmp_path):
  config = _config(tmp_path)
  for entry, t in zip(config.teachers, random_teachers(("resnet8", "resnet8"))):
    save_teacher(lifecycle.checkpoint_path(config, entry), t.arch, 10, t.variables, {"epochs": 1})
  with pytest.raises(lifecycle.StaleTeacherError, match=r"epochs \(not recorded\) -> 1"):
    lifecycle.load_teachers(config)
  explicit = _config(tmp_path, **{f"teachers{i}_checkpoint": lifecycle.checkpoint_path(config, e)
                                  for i, e in enumerate(config.teachers)})
  assert [t.name for t in lifecycle.load_teachers(explicit)] == ["s_resnet8a", "s_resnet8b"]
