"""The command line: every user mistake is one line on stderr and exit code 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mmkd_jax.runs import checkpoint
from mmkd_jax.runs import lock as workdir_lock

from helpers import DIGITS, ROOT


def _cli(*args, tmp_path=None, env_extra=None):
  env = dict(os.environ, **(env_extra or {}))
  if tmp_path is not None:
    env["TFDS_DATA_DIR"] = str(tmp_path / "tfds")
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, "-m", "mmkd_jax.main", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)


def _one_line_error(done, *fragments):
  assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
  lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
  assert len(lines) == 1, done.stderr[-2000:]
  assert "Traceback" not in done.stderr
  for fragment in fragments:
    assert fragment in lines[0], lines[0]


@pytest.mark.claim(1, 2, 3, 4, 5, 7)
@pytest.mark.parametrize("args, fragments", [
    (["--config", DIGITS, "--config.epochz=3"], ['Did you mean "epochs"']),
    (["--config", DIGITS, "--config.epochs=abc"], ["--config.epochs=abc", "invalid literal"]),
    (["--config", f"{DIGITS}:smok"], ["method='smok' is unknown; valid: none, kd"]),
    (["--config", "configs/nope.py"], ["config file configs/nope.py does not exist"]),
    ([], ["--config is required"]),
    (["--config", DIGITS, "--config.method=magic"], ["config.method: unknown method 'magic'"]),
    (["--config", DIGITS, "--config.dataset=no_such_dataset"], ["config.dataset: unknown dataset 'no_such_dataset'"]),
])
def test_config_mistakes(tmp_path, args, fragments):
  _one_line_error(_cli(*args, "--workdir", str(tmp_path / "w")), *fragments)


@pytest.mark.claim(6)
def test_workdir_mistakes(tmp_path):
  (tmp_path / "file").write_text("x")
  _one_line_error(_cli("--config", DIGITS, "--workdir", str(tmp_path / "file")), "is a file, not a directory")
  _one_line_error(_cli("--config", DIGITS), "--workdir is required")


@pytest.mark.claim(10)
@pytest.mark.parametrize("mode", ["pipeline", "train_teacher", "distill"])
def test_missing_explicit_teacher_checkpoint_is_named_not_trained(tmp_path, mode):
  """A mistyped teacher path is an error naming it, before anything is trained or written: the
  pipeline must neither train a teacher into it nor train the other teachers first."""
  missing = tmp_path / "typo" / "ckpt.pth"
  done = _cli("--config", f"{DIGITS}:smoke", "--workdir", str(tmp_path / "w"), f"--config.teacher_dir={tmp_path / 't'}",
              f"--config.teachers[0].checkpoint={missing}", f"--config.mode={mode}", tmp_path=tmp_path)
  _one_line_error(done, "config.teachers[0].checkpoint", str(missing), "does not exist")
  assert not (tmp_path / "typo").exists() and not (tmp_path / "t").exists() and not (tmp_path / "w").exists()


@pytest.mark.claim(11)
def test_pth_teacher_without_torch_names_the_extra(tmp_path):
  """Where torch is installed (CI), the command runs with a ``torch`` that fails to import, as on
  a machine without it."""
  hidden = tmp_path / "no_torch" / "torch"
  hidden.mkdir(parents=True)
  (hidden / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
  pth = tmp_path / "teacher.pth"
  pth.write_bytes(b"not really a checkpoint")
  done = _cli("--config", f"{DIGITS}:smoke", "--workdir", str(tmp_path / "w"), f"--config.teacher_dir={tmp_path / 't'}",
              f"--config.teachers[0].checkpoint={pth}", f"--config.teachers[1].checkpoint={pth}",
              "--config.mode=distill", tmp_path=tmp_path, env_extra={"PYTHONPATH": str(tmp_path / "no_torch")})
  _one_line_error(done, "needs torch", "pip install -e '.[torch]'")
  assert not (tmp_path / "w").exists() and not (tmp_path / "t").exists()


@pytest.mark.claim(12, 32)
def test_a_pth_teacher_with_pickled_objects_is_refused_naming_trust_pickle(tmp_path):
  """Refused before anything is trained or written, in the pipeline that would train the other
  teacher first; with --config.trust_pickle=True the same file is accepted."""
  torch = pytest.importorskip("torch")
  import argparse  # pylint: disable=import-outside-toplevel
  from helpers import random_teachers  # pylint: disable=import-outside-toplevel
  from mmkd_jax.teachers import convert  # pylint: disable=import-outside-toplevel
  (teacher,) = random_teachers(("resnet8",))
  pth = tmp_path / "teacher.pth"
  torch.save({"model": {k: torch.from_numpy(v.copy()) for k, v in convert.flax_to_torch(teacher.variables).items()},
              "opt": argparse.Namespace(lr=0.05)}, pth)
  args = ["--config", f"{DIGITS}:aver,smoke", "--workdir", str(tmp_path / "w"), f"--config.teacher_dir={tmp_path / 't'}",
          f"--config.teachers[0].checkpoint={pth}", "--config.mode=show_config"]
  before = _tree_digest(tmp_path)
  done = _cli(*args[:-1], tmp_path=tmp_path)
  _one_line_error(done, str(pth), "--config.trust_pickle=True")
  assert _tree_digest(tmp_path) == before
  trusted = _cli(*args[:-1], "--config.trust_pickle=True", "--config.mode=precompute", tmp_path=tmp_path)
  assert trusted.returncode == 2 and "s_resnet8b" in trusted.stderr  # now only the untrained teacher is missing


@pytest.mark.claim(21)
def test_a_second_run_on_a_busy_workdir_is_refused(tmp_path):
  workdir = tmp_path / "w"
  workdir.mkdir()
  with workdir_lock.WorkdirLock(str(workdir)):
    done = _cli("--config", f"{DIGITS}:none,smoke", "--workdir", str(workdir), "--config.mode=distill",
                "--config.epochs=1", tmp_path=tmp_path)
  _one_line_error(done, "is in use by pid", str(os.getpid()))


def _tree_digest(*roots) -> dict:
  """Every file under ``roots`` (path -> sha256, mtime) and every directory: what a refused
  command must leave as it was."""
  import hashlib  # pylint: disable=import-outside-toplevel
  out = {}
  for root in roots:
    for dirpath, dirnames, filenames in os.walk(root):
      out[dirpath] = "dir"
      for name in filenames:
        path = os.path.join(dirpath, name)
        with open(path, "rb") as f:
          out[path] = (hashlib.sha256(f.read()).hexdigest(), os.stat(path).st_mtime_ns)
  return out


@pytest.mark.claim(32, 34, 35, 36)
def test_refused_commands_change_nothing_on_disk(tmp_path):
  """Each refused command of a finished run's work directory: one line, exit 2, and the whole
  tree (work directory, teacher directory, data directory) byte for byte as it was."""
  workdir, teacher_dir = tmp_path / "w", tmp_path / "t"
  base = ["--config", f"{DIGITS}:none,smoke", "--workdir", str(workdir), f"--config.teacher_dir={teacher_dir}",
          "--config.epochs=1", "--config.lr=0.05"]
  done = _cli(*base, tmp_path=tmp_path)
  assert done.returncode == 0, done.stderr[-2000:]
  before = _tree_digest(tmp_path)
  new_run = f"--workdir={tmp_path / 'new'}"
  refused = [
      (["--config.lr=0.3"], ["holds checkpoint step 22 of another run", "lr: 0.05 -> 0.3"]),
      (["--config.method=aver"], ["holds checkpoint step 22 of another run", "method: 'none' -> 'aver'"]),
      (["--config.epochs=-1"], ["config.epochs: -1 trains nothing"]),
      (["--config.epochs=0", "--config.mode=train_teacher"], ["config.epochs: 0 trains nothing"]),
      (["--config.dataset=imdb_reviews", f"--workdir={tmp_path / 'new'}"], ["config.dataset", "has no feature 'image'"]),
      (["--config.dataset=cifar10", f"--workdir={tmp_path / 'new'}"], ["dataset 'cifar10'",
                                                                     "python -m mmkd_jax.data.prepare cifar10"]),
      (["--config.mode=evaluate", f"--workdir={tmp_path / 'typo'}"], ["does not exist"]),
      (["--config.mode=export", f"--workdir={tmp_path / 'typo'}"], ["does not exist"]),
      # a method that loads teachers: one trained with other settings, a mistyped checkpoint, no cache
      (["--config.method=aver", "--config.teacher_training.lr=0.1", new_run],
       ["teacher 's_resnet8a'", "was trained with other settings", "lr 0.05 -> 0.1"]),
      (["--config.method=aver", f"--config.teachers[1].checkpoint={tmp_path / 'nope.pth'}", new_run],
       ["config.teachers[1].checkpoint", "nope.pth does not exist"]),
      (["--config.method=aver", "--config.mode=distill", new_run], ["no teacher cache in", "mode=precompute"]),
  ]
  for extra, fragments in refused:
    args = list(base)
    if any(e.startswith("--workdir=") for e in extra):
      args[args.index("--workdir"):args.index("--workdir") + 2] = []
    _one_line_error(_cli(*args, *extra, tmp_path=tmp_path), *fragments)
    assert _tree_digest(tmp_path) == before, extra
  with workdir_lock.WorkdirLock(str(workdir)):  # a second run while the first holds the work directory
    locked = _cli(*base, tmp_path=tmp_path)
  _one_line_error(locked, "is in use by pid")
  assert {k: v for k, v in _tree_digest(tmp_path).items() if not k.endswith(".lock")} == \
      {k: v for k, v in before.items() if not k.endswith(".lock")}


@pytest.mark.claim(39)
def test_help_exits_zero_and_names_show_config():
  done = _cli("--help")
  assert done.returncode == 0 and "--config.mode=show_config" in done.stdout and "Traceback" not in done.stderr


@pytest.mark.claim(22)
def test_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path):
  import json  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / "w"
  env = dict(os.environ, TFDS_DATA_DIR=str(tmp_path / "tfds"))
  env.pop("XLA_FLAGS", None)
  done = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "kill_worker.py"), "disk_full", "2", "--",
                         "--config", f"{DIGITS}:none,smoke", "--workdir", str(workdir), "--config.mode=distill",
                         "--config.epochs=2", "--config.async_checkpoints=False"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  _one_line_error(done, "No space left on device", str(workdir / "checkpoints"))
  state = checkpoint.Checkpoints(str(workdir), async_save=False)
  found = state.latest_meta()
  assert found is not None and found[1] == 22 and json.dumps(found[0]["history"])  # epoch 1 intact
