"""The ``config.replicas`` grammar: seeds, per-replica overrides, and the checks against the method."""

from __future__ import annotations

import pytest

from mmkd_jax import config as config_lib
from mmkd_jax.config import replicas as replica_spec
from mmkd_jax.errors import ConfigError


def test_replicas_field_is_checked():
  assert replica_spec.replica_seeds(config_lib.set_fields(config_lib.base_config(), ["replicas=0,1,2"])) == (0, 1, 2)
  assert replica_spec.replica_seeds(config_lib.base_config()) == ()
  entries = replica_spec.replica_entries(config_lib.set_fields(
      config_lib.base_config(), {"replicas": "0, 0:weights.feat=10:meta.lr=0.01, 1:temperature=2"}))
  assert [e.name for e in entries] == ["seed0", "seed0_meta.lr=0.01_weights.feat=10", "seed1_temperature=2"]
  assert entries[1].overrides == (("meta.lr", 0.01), ("weights.feat", 10.0))
  for bad, words in (("0,x", "integer seed"), ("1,1", "repeats an entry"), ("0:momentum=0.5", "tunable scalar"),
                     ("0:lr=fast", "not a number"), ("0:feat_from_epoch=3", "tunable scalar")):
    with pytest.raises(ConfigError, match=words):
      replica_spec.replica_entries(config_lib.set_fields(config_lib.base_config(), {"replicas": bad}))


def test_replica_overrides_are_checked_against_the_method():
  base = config_lib.set_fields(config_lib.base_config(), {"method": "aver"})
  base.teachers = [config_lib.teacher("t_a", "resnet8")]
  for bad, words in (("0,1:weights.angle=1", "no term 'angle'"), ("0,1:meta.lr=0.1", "no meta networks"),
                     ("0,1:meta.lookahead_weights.kd=1", "no look-ahead")):
    with pytest.raises(ConfigError, match=words):
      config_lib.validate(config_lib.set_fields(base.copy_and_resolve_references(), {"replicas": bad}))
  with pytest.raises(ConfigError, match="base config's weights.kd is 0"):
    config_lib.validate(config_lib.set_fields(base.copy_and_resolve_references(),
                                              {"replicas": "0,1:weights.kd=1", "weights.kd": 0.0}))
  assert config_lib.validate(config_lib.set_fields(base.copy_and_resolve_references(),
                                                   {"replicas": "0,0:weights.kd=2:lr=0.1:temperature=2"}))
