"""Teachers through a run: a trained teacher records what produced it, and a config that asks
for other settings is refused naming each differing field (never silently served)."""

from __future__ import annotations

import os
import re

import numpy as np

import pytest

from mmkd_jax import config as config_lib
from mmkd_jax.teachers import stages as teacher_stages
from mmkd_jax.teachers import save_teacher

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
    save_teacher(teacher_stages.checkpoint_path(config, entry), t.arch, 10, t.variables,
                 {"identity": teacher_stages.identity(config, entry)})
  return config


def test_the_same_settings_reuse_the_teacher(tmp_path):
  config = _saved(tmp_path)
  teacher_stages.check_trained_teachers(config)
  assert teacher_stages.train_missing_teachers(config) == 0.0  # nothing to train


# A change of each recorded identity field (teacher_stages.IDENTITY_FIELDS, the entry's arch and
# seed). The test is parametrized over the field list itself: a field added there fails until it
# has a change here, so every field is covered by construction.
CHANGES = {
    "arch": {"teachers0_arch": "resnet14"},
    "seed": {"teachers0_seed": 7},
    "dataset": {"dataset": "cifar10"},                # lives apart: its directory is named by dataset
    "train_split": {"train_split": "train[:500]"},    # and by training split
    "train_classes": {"teachers0_classes": (4, 5, 6)},
    "label_noise": {"teachers0_label_noise": 0.6},
    "label_noise_seed": {"label_noise_seed": 3},
    "normalization": {"normalization.mean": (0.5, 0.5, 0.5), "normalization.std": (0.25, 0.25, 0.25)},
    "image_size": {"image_size": 64},
    "augmentation_seed": {"teacher_training.views": "shared"},  # own views: from the teacher's seed
    "batch_size": {"batch_size": 32},
    "epochs": {"teacher_training.epochs": 3},
    "lr": {"teacher_training.lr": 0.1},
    "lr_milestones": {"teacher_training.lr_milestones": (5,)},
    "lr_decay": {"lr_decay": 0.5},
    "momentum": {"momentum": 0.8},
    "nesterov": {"nesterov": False},
    "weight_decay": {"weight_decay": 1e-3},
    "dtype": {"dtype": "bfloat16"},
    "sync_batch_norm": {"sync_batch_norm": True},
    "batch_norm_groups": {"batch_norm_groups": 2},
    "student_checkpoint": "fine-tuned",                # both: the start of a fine-tuned teacher
    "checkpoint_head": "fine-tuned",
}


@pytest.mark.claim(33)
@pytest.mark.parametrize("field", ("arch", "seed", *teacher_stages.IDENTITY_FIELDS))
def test_a_changed_identity_field_is_refused_naming_it(tmp_path, field):
  assert field in CHANGES, f"teacher_stages.IDENTITY_FIELDS gained {field!r}: add a change of it to CHANGES"
  base = _saved(tmp_path)
  override = CHANGES[field]
  if override == "fine-tuned":
    from mmkd_jax.teachers import convert  # pylint: disable=import-outside-toplevel
    (start,) = random_teachers(("resnet8",))
    np.savez(tmp_path / "start.npz", **convert.flax_to_torch(start.variables))
    override = {"teachers0_checkpoint": str(tmp_path / "start.npz"), "teachers0_checkpoint_head": "reinit"}
  if field == "dataset":  # not a dataset of this machine: resolved, not validated
    config = config_lib.resolve(digits_smoke(teacher_dir=str(tmp_path), **override))
  else:
    config = _config(tmp_path, **override)
  before = teacher_stages.identity(base, base.teachers[0])
  assert teacher_stages.identity(config, config.teachers[0])[field] != before[field]
  path = teacher_stages.checkpoint_path(config, config.teachers[0])
  if path != teacher_stages.checkpoint_path(base, base.teachers[0]):
    assert field in ("dataset", "train_split")  # a teacher of another dataset or split lives apart
    return
  path = os.path.abspath(path)
  for check in (teacher_stages.check_trained_teachers, teacher_stages.train_missing_teachers, teacher_stages.load_teachers):
    with pytest.raises(teacher_stages.StaleTeacherError) as raised:
      check(config)
    message = str(raised.value)
    assert re.search(rf"(^|; |: ){field} \S.* -> ", message) and path in message, message
    assert "--config.teachers[0].name=s_resnet8a_2" in message  # train the new one beside it
    assert f"--config.teachers[0].checkpoint={path}" in message  # or accept the existing one


def test_student_settings_do_not_make_a_teacher_stale(tmp_path):
  """Nor do they reach the teacher's training: it keeps the papers' multistep SGD."""
  _saved(tmp_path)
  config = _config(tmp_path, method="aver", lr=0.3, seed=5, epochs=7, schedule="cosine", warmup_epochs=1.0,
                   optimizer="adamw", label_smoothing=0.1, student_checkpoint=str(tmp_path), checkpoint_head="reinit")
  teacher_stages.check_trained_teachers(config)
  tc = teacher_stages.training_config(config, config.teachers[0])
  assert (tc.schedule, tc.warmup_epochs, tc.optimizer, tc.label_smoothing) == ("multistep", 0.0, "sgd", 0.0)
  assert (tc.student_checkpoint, tc.checkpoint_head) == ("", "keep")


@pytest.mark.claim(33)
def test_a_teacher_without_a_record_is_refused_unless_named_explicitly(tmp_path):
  config = _config(tmp_path)
  for entry, t in zip(config.teachers, random_teachers(("resnet8", "resnet8"))):
    save_teacher(teacher_stages.checkpoint_path(config, entry), t.arch, 10, t.variables, {"epochs": 1})
  with pytest.raises(teacher_stages.StaleTeacherError, match=r"epochs \(not recorded\) -> 1"):
    teacher_stages.load_teachers(config)
  explicit = _config(tmp_path, **{f"teachers{i}_checkpoint": teacher_stages.checkpoint_path(config, e)
                                  for i, e in enumerate(config.teachers)})
  assert [t.name for t in teacher_stages.load_teachers(explicit)] == ["s_resnet8a", "s_resnet8b"]


def test_teachers_train_on_views_of_their_own_not_the_students(tmp_path):
  """teacher_training.views=own (the default): a teacher's crop and flip of an example in an epoch
  are not the student's of that example in that epoch, through both real setups' device batches
  (with shared views the student trains on the very pixels its teachers were trained on, which
  the originals' fresh crops never do: RESULTS.md section 12); =shared: the student's seed, as
  every teacher trained before the field."""
  from mmkd_jax.training import setup as train  # pylint: disable=import-outside-toplevel
  _saved(tmp_path)
  config = _config(tmp_path, teacher_source="online")
  teacher_setup, batches = _teacher_batches(config, 0)
  raw = batches[0]
  assert teacher_stages.training_config(config, config.teachers[0]).augmentation_seed == \
      teacher_stages.teacher_view_seed(config.teachers[0].seed) != config.augmentation_seed
  student_setup = train.build(config, teacher_stages.load_teachers(config))
  teacher_view = np.asarray(teacher_setup.steps.device_batch(raw, ())["image"])
  student_view = np.asarray(student_setup.steps.device_batch(
      raw, tuple(t.variables for t in student_setup.steps.teachers))["image"])
  # independent views coincide by chance only (1 in 2 * 81 at padding 4); the same seed: all
  assert np.mean(np.all(teacher_view == student_view, axis=(1, 2, 3))) < 0.2
  shared = _config(tmp_path, **{"teacher_training.views": "shared"})
  assert teacher_stages.training_config(shared, shared.teachers[0]).augmentation_seed == shared.augmentation_seed


def test_a_teacher_trained_on_the_students_views_is_refused_with_the_switch_that_uses_it(tmp_path):
  """A teacher trained before teacher_training.views (on the students' views) is stale under the
  default and the refusal names the switch; with views=shared it is reused."""
  _saved(tmp_path, **{"teacher_training.views": "shared"})
  with pytest.raises(teacher_stages.StaleTeacherError, match=r"augmentation_seed 0 -> \d+.*teacher_training.views=shared"):
    teacher_stages.check_trained_teachers(_config(tmp_path))
  teacher_stages.check_trained_teachers(_config(tmp_path, **{"teacher_training.views": "shared"}))


def _teacher_batches(config, index):
  from mmkd_jax.training import setup as train  # pylint: disable=import-outside-toplevel
  setup = train.build(teacher_stages.training_config(config, config.teachers[index]))
  return setup, list(train.train_batches(setup, 0))


def test_a_specialist_sees_only_its_classes_and_noise_is_applied_as_configured(tmp_path):
  from mmkd_jax.data import sources  # pylint: disable=import-outside-toplevel
  config = _config(tmp_path, teachers0_classes=(0, 1, 2), teachers1_label_noise=0.6)
  setup, batches = _teacher_batches(config, 0)
  seen = np.concatenate([b["label"] for b in batches])
  clean = sources.record_labels(setup.dataset.train, setup.spec)
  assert set(seen.tolist()) == {0, 1, 2}  # every batch: only its classes
  assert len(seen) == (np.isin(clean, [0, 1, 2]).sum() // 64) * 64  # and all of them, in whole batches
  np.testing.assert_array_equal(seen, clean[np.concatenate([b["index"] for b in batches])])
  assert setup.steps_per_epoch == np.isin(clean, [0, 1, 2]).sum() // 64
  setup, batches = _teacher_batches(config, 1)
  indices = np.concatenate([b["index"] for b in batches])
  noisy = np.concatenate([b["label"] for b in batches])
  changed = np.mean(noisy != clean[indices])
  assert abs(changed - 0.6) < 3 * np.sqrt(0.6 * 0.4 / len(indices)), changed  # 0.6 within 3 sigma
  assert np.all((noisy >= 0) & (noisy < 10))
  np.testing.assert_array_equal(noisy, setup.dataset.train_labels[indices])  # a fixed function of the record
  _, again = _teacher_batches(config, 1)
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in again]), noisy)


def test_a_teacher_on_its_own_split_lives_apart(tmp_path):
  config = _config(tmp_path, teachers0_train_split="train[:500]")
  assert teacher_stages.checkpoint_path(config, config.teachers[0]).endswith("digits-train__500_s_resnet8a")
  assert teacher_stages.checkpoint_path(config, config.teachers[1]).endswith("digits_s_resnet8b")


def test_a_teacher_is_fine_tuned_from_a_checkpoint_of_another_class_count(tmp_path):
  """checkpoint_head=reinit: the entry's checkpoint (a 100-class resnet8 here, as torchvision's
  1000-class weights would be) is where its training starts, with a new classifier; it is trained
  into teacher_dir and that start is part of its recorded identity. Without reinit the same file
  is refused naming the class counts; a teacher recorded before these fields still matches."""
  from mmkd_jax.teachers import convert  # pylint: disable=import-outside-toplevel
  (pretrained,) = random_teachers(("resnet8",), num_classes=100)
  start = str(tmp_path / "imagenet_like.npz")
  np.savez(start, **convert.flax_to_torch(pretrained.variables))
  config = _config(tmp_path, teachers0_checkpoint=start, teachers0_checkpoint_head="reinit")
  entry = config.teachers[0]
  path = teacher_stages.checkpoint_path(config, entry)
  assert path.startswith(str(tmp_path)) and path != start and not teacher_stages.is_explicit(entry)
  tc = teacher_stages.training_config(config, entry)
  assert (tc.student_checkpoint, tc.checkpoint_head) == (start, "reinit")
  teacher_stages.check_trained_teachers(config)  # the start loads
  recorded = teacher_stages.identity(config, entry)
  assert recorded["student_checkpoint"] == start and recorded["checkpoint_head"] == "reinit"
  kept = _config(tmp_path, teachers0_checkpoint=start)
  with pytest.raises(convert.ConversionError, match="has 100 classes, the dataset 10"):
    teacher_stages.load_teachers(kept)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    teacher_stages.check_trained_teachers(_config(tmp_path, teachers0_checkpoint=start + ".gone",
                                                  teachers0_checkpoint_head="reinit"))
  plain = _config(tmp_path)
  older = {k: v for k, v in teacher_stages.identity(plain, plain.teachers[0]).items()
           if k not in ("student_checkpoint", "checkpoint_head")}
  assert teacher_stages.identity_differences(older, teacher_stages.identity(plain, plain.teachers[0])) == []
