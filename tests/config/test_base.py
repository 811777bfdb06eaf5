"""Configs: every shipped file loads and validates; method presets resolve; errors name fields."""

from __future__ import annotations

import glob
import json
import os

import pytest

from mmkd_jax import config as config_lib
from mmkd_jax.runs import identity as run_identity
from mmkd_jax.methods import METHODS
from mmkd_jax.errors import ConfigError

from helpers import DIGITS, ROOT

# The settings (configs/run.py is not one: it loads a run's config.json, tested below).
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                 if not p.endswith(("__init__.py", "run.py")))


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.basename(p) for p in CONFIGS])
def test_config_loads_validates_and_has_its_header(path):
  config_lib.validate(config_lib.load(path))
  with open(path) as f:
    header = f.read().split('"""')[1]
  assert "python -m mmkd_jax.main --config configs/" + os.path.basename(path) in header
  assert "Expected" in header and ("minutes" in header or "hours" in header or "not run" in header)
  smoke = config_lib.validate(config_lib.load(path, "smoke"))
  assert smoke.epochs <= 2


def test_every_method_resolves_on_every_config():
  """Each method's owned fields take its preset for the config's dataset, else its default; its
  terms are the only weighted ones; a bi-level method's look-ahead weights are set too."""
  for path in CONFIGS:
    for method in METHODS:
      c = config_lib.validate(config_lib.load(path, "smoke", {"method": method}))
      spec = METHODS.get(method)
      preset = {**spec.presets.get("*", {}), **spec.presets.get(c.dataset, {})}
      where = f"{os.path.basename(path)} {method}"
      assert c.method == method and c.resolved_for == f"{method}@{c.dataset}", where
      assert {t for t, w in c.weights.items() if w is not None} == set(spec.terms), where
      for term, default in spec.terms.items():
        assert c.weights[term] == preset.get(f"weights.{term}", default), (where, term)
      assert c.temperature == preset.get("temperature", spec.temperature), where
      assert c.feature_layer == preset.get("feature_layer", spec.feature_layer), where
      looked_ahead = {t for t, w in c.meta.lookahead_weights.items() if w is not None}
      assert looked_ahead == (set(spec.terms) if spec.bilevel else set()), where


@pytest.mark.claim(3)
def test_unknown_config_argument_lists_the_valid_ones():
  with pytest.raises(ConfigError, match="'smok' is unknown; valid: .*mmkd"):
    config_lib.load(DIGITS, "smok")
  with pytest.raises(ConfigError, match="student='resnet9' is unknown; valid: .*resnet8"):
    config_lib.load(os.path.join(ROOT, "configs", "cifar100.py"), "resnet9,vgg13,mmkd")
  with pytest.raises(ConfigError, match="not understood; valid: student=..., teacher=..., method=..."):
    config_lib.load(os.path.join(ROOT, "configs", "cifar100.py"), "vgg8,vgg13,mmkd,extra")
  args = config_lib.parse_arg("teacher=vgg13,smoke", ("student", "teacher"), {"student": "a", "teacher": "b"})
  assert (args.student, args.teacher, args.smoke) == ("a", "vgg13", True)


def test_method_switch_applies_that_methods_settings():
  """--config.method=fitnet on the MMKD default gets FitNet's layer and weight (the bug this
  design fixes: it used to keep feat[-2] and MMKD's beta)."""
  mmkd = config_lib.resolve(config_lib.load(DIGITS))
  assert (mmkd.feature_layer, mmkd.weights.feat, mmkd.meta.lookahead_weights.feat) == (-2, 10.0, 10.0)
  assert mmkd.meta.lookahead_weights.ce == 0.0
  fitnet = config_lib.resolve(config_lib.load(DIGITS, overrides={"method": "fitnet"}))
  assert (fitnet.feature_layer, fitnet.weights.feat, fitnet.feat_from_epoch) == (2, 100.0, 1)
  assert fitnet.meta.lookahead_weights.feat is None
  amtml = config_lib.resolve(config_lib.load(DIGITS, overrides={"method": "amtml"}))
  assert (amtml.temperature, amtml.weights.ce, amtml.weights.kd, amtml.amtml.adapter_epochs) == (5.0, 0.3, 1.4, 5)
  cifar = config_lib.resolve(config_lib.load(os.path.join(ROOT, "configs", "cifar100.py")))
  assert cifar.weights.feat == 100.0  # the digits preset applies to digits only
  # An explicit value always wins over the preset.
  explicit = config_lib.resolve(config_lib.load(DIGITS, overrides={"weights.feat": 3.0, "method": "camkd"}))
  assert explicit.weights.feat == 3.0 and explicit.meta.lookahead_weights.ce is None


@pytest.mark.claim(9)
def test_resolution_is_idempotent_and_refuses_a_stale_method():
  resolved = config_lib.resolve(config_lib.load(DIGITS))
  assert config_lib.resolve(resolved) is resolved
  stale = resolved.copy_and_resolve_references()
  stale.method = "aver"
  with pytest.raises(ConfigError, match="resolved for mmkd@digits, not aver@digits"):
    config_lib.resolve(stale)


@pytest.mark.claim(7, 8)
@pytest.mark.parametrize("override, field", [
    ({"student": "resnet9"}, "config.student"),
    ({"method": "magic"}, "config.method"),
    ({"mmkd.buffer_size": 100}, "config.mmkd.buffer_size"),
    ({"teacher_source": "disk"}, "config.teacher_source"),
    ({"dataset": "no_such_dataset"}, "config.dataset"),
    ({"cache_dtype": "int8"}, "config.cache_dtype"),
    ({"meta.hypergradient": "backward"}, "config.meta.hypergradient"),
    ({"method": "ebkd", "weights.feat": 1.0}, "config.weights.feat"),
    ({"method": "aver", "meta.lookahead_weights.kd": 1.0}, "config.meta.lookahead_weights.kd"),
    ({"kd.teacher_index": 7, "method": "kd"}, "config.kd.teacher_index"),
    ({"amtml.kd_reduction": "sum", "method": "amtml"}, "config.amtml.kd_reduction"),
])
def test_config_errors_name_the_field(override, field):
  with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
    config_lib.validate(config_lib.load(DIGITS, "smoke", override))


@pytest.mark.claim(41)
@pytest.mark.parametrize("arg", ["mmkd", "aver,smoke", "bomd"])
def test_a_runs_config_json_loads_back_to_the_same_resolved_config(arg, tmp_path):
  """What a run records in config.json is a valid --config for the same run (configs/run.py)."""
  resolved = config_lib.validate(config_lib.load(DIGITS, arg, {"lr": 0.07, "seed": 3, "imports": ()}))
  path = tmp_path / "config.json"
  path.write_text(resolved.to_json_best_effort(indent=2))
  again = config_lib.validate(config_lib.load(os.path.join(ROOT, "configs", "run.py"), str(path)))
  assert run_identity.changed_fields(json.loads(resolved.to_json_best_effort()), again) == []
  assert again.to_json_best_effort() == resolved.to_json_best_effort()


def test_a_cosine_schedule_is_fixed_to_its_epochs_so_a_longer_resume_is_a_new_run():
  """schedule_epochs resolves to epochs for a schedule that spans the run; a resume asking for
  more epochs names the change (the cosine would bend differently); multistep keeps epochs free."""
  cosine = config_lib.validate(config_lib.load(DIGITS, "smoke", {"schedule": "cosine", "epochs": 4}))
  assert cosine.schedule_epochs == 4
  stored = json.loads(cosine.to_json_best_effort())
  longer = config_lib.validate(config_lib.load(DIGITS, "smoke", {"schedule": "cosine", "epochs": 6}))
  assert run_identity.changed_fields(stored, longer) == ["schedule_epochs: 4 -> 6"]
  kept = config_lib.validate(config_lib.load(DIGITS, "smoke", {"schedule": "cosine", "epochs": 6, "schedule_epochs": 4}))
  assert run_identity.changed_fields(stored, kept) == []
  multistep = config_lib.validate(config_lib.load(DIGITS, "smoke", {"epochs": 4}))
  assert multistep.schedule_epochs == 0
  assert run_identity.changed_fields(json.loads(multistep.to_json_best_effort()),
                             config_lib.validate(config_lib.load(DIGITS, "smoke", {"epochs": 6}))) == []


@pytest.mark.parametrize("override, words", [
    ({"schedule": "cosin"}, "config.schedule: unknown schedule 'cosin'"),
    ({"optimizer": "adam"}, "config.optimizer: unknown optimizer 'adam'"),
    ({"label_smoothing": 1.0}, "config.label_smoothing"),
    ({"warmup_epochs": -1.0}, "config.warmup_epochs"),
    ({"optimizer": "adamw", "method": "mmkd"}, "config.optimizer: method 'mmkd' is bi-level"),
])
def test_schedule_and_optimizer_errors_name_the_field(override, words):
  with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
    config_lib.validate(config_lib.load(DIGITS, "smoke", override))
  assert config_lib.validate(config_lib.load(DIGITS, "smoke", {"optimizer": "adamw", "method": "aver"}))
