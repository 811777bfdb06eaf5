"""A run's identity across sessions: which config changes a resume refuses."""

from __future__ import annotations

import json
import subprocess

import pytest

from mmkd_jax import __version__
from mmkd_jax import config as config_lib
from mmkd_jax.runs import identity as run_identity

from helpers import DIGITS


def _stored(config) -> dict:
  return json.loads(config.to_json_best_effort())


def test_changed_fields_names_each_difference_and_ignores_the_resumable_ones():
  resolved = config_lib.validate(config_lib.load(DIGITS, "aver"))
  stored = _stored(resolved)
  again = config_lib.validate(config_lib.load(DIGITS, "aver", {"lr": 0.07, "epochs": 3, "log_every": 7}))
  assert run_identity.changed_fields(stored, again) == ["lr: 0.05 -> 0.07"]


@pytest.mark.claim(43)
def test_a_field_added_by_later_code_at_its_default_is_no_change():
  """A run stored before ``adapter_init`` existed resumes under code that has it at its default
  (the behaviour the run was made with); any other value is a change."""
  resolved = config_lib.validate(config_lib.load(DIGITS, "mmkd"))
  stored = _stored(resolved)
  del stored["adapter_init"]
  assert run_identity.changed_fields(stored, resolved) == []
  torch_init = config_lib.validate(config_lib.load(DIGITS, "mmkd", {"adapter_init": "torch"}))
  assert run_identity.changed_fields(stored, torch_init) == ["adapter_init: '<unset>' -> 'torch'"]


def test_teacher_entries_added_fields_default_and_their_checkpoint_path_is_no_change():
  """A teacher entry stored before it had ``classes`` / ``label_noise`` / ... resumes at their
  defaults; a teacher's checkpoint path may move (its fingerprint is what is compared); its seed
  may not change."""
  resolved = config_lib.validate(config_lib.load(DIGITS, "aver"))
  stored = _stored(resolved)
  for entry in stored["teachers"]:
    for field in ("classes", "label_noise", "train_split", "epochs", "lr"):
      del entry[field]
  assert run_identity.changed_fields(stored, resolved) == []
  moved = config_lib.validate(config_lib.load(DIGITS, "aver", {"teachers[0].checkpoint": "/elsewhere/t0"}))
  assert run_identity.changed_fields(_stored(resolved), moved) == []
  reseeded = config_lib.validate(config_lib.load(DIGITS, "aver", {"teachers[0].seed": 77}))
  assert run_identity.changed_fields(_stored(resolved), reseeded) == [f"teachers.[0].seed: {resolved.teachers[0].seed} -> 77"]


def test_code_version_is_dirty_only_when_the_package_itself_changed(tmp_path):
  """A real git checkout: a changed test or document leaves the run's code version clean, a
  changed or new package file makes it -dirty; a package that the repository around it does not
  track (a virtualenv inside a user's checkout) names no commit."""
  def git(*args):
    return subprocess.run(["git", "-C", str(tmp_path), *args], capture_output=True, text=True, check=True).stdout.strip()
  package = tmp_path / "pkg"
  package.mkdir()
  (package / "__init__.py").write_text("")
  (package / "steps.py").write_text("LR = 0.1\n")
  (tmp_path / "README.md").write_text("a\n")
  git("init", "-q")
  git("add", ".")
  git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
  commit = git("rev-parse", "--short", "HEAD")
  read = run_identity._read_code_version  # pylint: disable=protected-access
  assert read(str(package)) == f"{__version__}+{commit}"
  (tmp_path / "README.md").write_text("b\n")
  (tmp_path / "notes.txt").write_text("new\n")
  assert read(str(package)) == f"{__version__}+{commit}"
  (package / "steps.py").write_text("LR = 0.2\n")
  assert read(str(package)) == f"{__version__}+{commit}-dirty"
  git("checkout", "--", "pkg/steps.py")
  (package / "new_method.py").write_text("")
  assert read(str(package)) == f"{__version__}+{commit}-dirty"
  untracked = tmp_path / "venv" / "pkg"
  untracked.mkdir(parents=True)
  (untracked / "__init__.py").write_text("")
  assert read(str(untracked)) == __version__
