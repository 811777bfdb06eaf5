"""Setting dotted config fields: literals, teacher entries, method sections on first set, renamed
fields and the errors that name an override."""

from __future__ import annotations

import json
import os

import pytest

from mmkd_jax import config as config_lib
from mmkd_jax.runs import identity as run_identity
from mmkd_jax.errors import ConfigError

from helpers import ROOT


def test_set_fields_parses_literals_and_names_unknown_fields():
  c = config_lib.base_config()
  config_lib.set_fields(c, ["lr_milestones=(3, 4)", "teacher_dir=/x/y", "meta.lr=0.5"])
  assert (c.lr_milestones, c.teacher_dir, c.meta.lr) == ((3, 4), "/x/y", 0.5)
  with pytest.raises(ConfigError, match="config.meta.lrr: no such field"):
    config_lib.set_fields(c, {"meta.lrr": 1})


def test_overrides_parse_as_the_command_line_writes_them():
  """Text fields keep text, flags take true/false, other fields Python literals; a bad literal,
  an unknown field (with the closest name) and a missing list entry name the override."""
  c = config_lib.base_config()
  config_lib.set_fields(c, ["async_checkpoints=false", "epochs=7", "lr_milestones=(2, 5)", "train_split=train[:10%]",
                            "teachers[0].seed=9" if c.teachers else "seed=3"])
  assert c.async_checkpoints is False and c.epochs == 7 and c.lr_milestones == (2, 5)
  assert c.train_split == "train[:10%]"
  with pytest.raises(ConfigError, match=r"config.epochs=abc: invalid literal for int"):
    config_lib.set_fields(c, ["epochs=abc"])
  with pytest.raises(ConfigError, match='config.epochz: no such field. Did you mean "epochs"'):
    config_lib.set_fields(c, ["epochz=3"])
  with pytest.raises(ConfigError, match=r"config.teachers\[40\].seed: config.teachers has no entry 40"):
    config_lib.set_fields(c, ["teachers[40].seed=1"])


def test_a_run_recorded_before_fields_were_renamed_loads_and_compares_unchanged():
  """config.RENAMED: a committed run's config.json (weights.feat_from_epoch, mmkd.gram_per_device)
  loads under the current names and counts as the same run; the old name on the command line
  says the new one."""
  path = os.path.join(ROOT, "experiments", "results", "fashion_mnist", "resnet20__wrn_16_2__vgg8____resnet8",
                      "mmkd", "seed0", "config.json")
  with open(path) as f:
    stored = json.load(f)
  assert "feat_from_epoch" in stored["weights"] and "gram_per_device" in stored["mmkd"]
  loaded = config_lib.resolve(config_lib.from_json(stored))
  assert loaded.feat_from_epoch == 0 and loaded.mmkd.gram_per_bn_group is False
  assert "feat_from_epoch" not in loaded.weights and "gram_per_device" not in loaded.mmkd
  assert run_identity.changed_fields(stored, loaded) == []
  # made before teacher_training.views: its teachers trained on the students' views
  assert "views" not in stored["teacher_training"] and loaded.teacher_training.views == "shared"
  with pytest.raises(ConfigError, match="config.weights.feat_from_epoch is now config.feat_from_epoch"):
    config_lib.set_fields(config_lib.base_config(), ["weights.feat_from_epoch=1"])
