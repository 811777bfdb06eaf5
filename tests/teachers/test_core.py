"""mmkd_jax.teachers.core: a teacher's fingerprint is its arrays (not their order), a saved
teacher loads back bit for bit and is never overwritten, a mismatched or unfinished directory is
refused, and the joint forward stacks every teacher's outputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmkd_jax.models import get_model
from mmkd_jax.teachers import core

SHAPE = (16, 16, 3)


def _variables(seed: int):
  return get_model("resnet8", 10).init(jax.random.key(seed), jnp.zeros((1, *SHAPE)), train=False)


def test_fingerprint_is_the_arrays_not_their_order():
  v = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float32)}
  reordered = {"b": v["b"], "a": v["a"]}
  assert core.fingerprint(v) == core.fingerprint(reordered)
  flipped = {"a": v["a"].copy(), "b": v["b"]}
  flipped["a"].view(np.uint32)[0, 0] ^= 1  # one bit of one float
  assert core.fingerprint(flipped) != core.fingerprint(v)
  assert core.fingerprint({"a": v["a"].astype(np.float64), "b": v["b"]}) != core.fingerprint(v)


def test_saved_teacher_loads_back_and_is_not_overwritten(tmp_path):
  variables = _variables(0)
  directory = str(tmp_path / "t")
  core.save_teacher(directory, "resnet8", 10, variables, {"accuracy": 91.5})
  assert core.is_complete(directory)
  teacher = core.load_teacher("t", "resnet8", 10, directory, SHAPE)
  assert teacher.fingerprint == core.fingerprint(variables) and teacher.accuracy == 91.5
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(teacher.variables)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(FileExistsError, match="refusing to overwrite"):
    core.save_teacher(directory, "resnet8", 10, _variables(1), {})
  with pytest.raises(ValueError, match="holds a resnet8 with 10 classes, the config asks for resnet8 with 100"):
    core.load_teacher("t", "resnet8", 100, directory, SHAPE)
  (tmp_path / "unfinished").mkdir()
  with pytest.raises(FileNotFoundError, match="it is not a finished teacher"):
    core.load_teacher("u", "resnet8", 10, str(tmp_path / "unfinished"), SHAPE)


def test_joint_forward_stacks_the_teachers_outputs():
  teachers = [core.Teacher(f"t{s}", "resnet8", 10, _variables(s), "") for s in (0, 1)]
  images = jax.random.normal(jax.random.key(2), (4, *SHAPE))
  logits, feats = core.teacher_forward(teachers, [t.variables for t in teachers], images)
  assert logits.shape == (4, 2, 10) and len(feats) == 2
  assert core.feature_shapes(teachers, SHAPE) == [tuple(f.shape[1:]) for f in feats]
  for k, t in enumerate(teachers):
    _, alone = t.model.apply(t.variables, images, train=False)
    np.testing.assert_array_equal(np.asarray(logits[:, k]), np.asarray(alone))
