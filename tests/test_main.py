"""The command line: every user mistake is one line on stderr and exit code 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mmkd_jax import checkpoint

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


@pytest.mark.parametrize("args, fragments", [
    (["--config", DIGITS, "--config.epochz=3"], ['Did you mean "epochs"']),
    (["--config", DIGITS, "--config.epochs=abc"], ["--config.epochs=abc", "invalid literal"]),
    (["--config", f"{DIGITS}:smok"], ["method='smok' is unknown; valid: none, kd"]),
    (["--config", "configs/nope.py"], ["No such file or directory", "configs/nope.py"]),
    ([], ["--config is required"]),
    (["--config", DIGITS, "--config.method=magic"], ["config.method: unknown method 'magic'"]),
    (["--config", DIGITS, "--config.dataset=no_such_dataset"], ["config.dataset: unknown dataset 'no_such_dataset'"]),
])
def test_config_mistakes(tmp_path, args, fragments):
  _one_line_error(_cli(*args, "--workdir", str(tmp_path / "w")), *fragments)


def test_workdir_mistakes(tmp_path):
  (tmp_path / "file").write_text("x")
  _one_line_error(_cli("--config", DIGITS, "--workdir", str(tmp_path / "file")), "is a file, not a directory")
  _one_line_error(_cli("--config", DIGITS), "--workdir is required")


def test_missing_explicit_teacher_checkpoint_is_named_not_trained(tmp_path):
  """A mistyped teacher path is an error naming it; the pipeline must not train a teacher into it."""
  missing = tmp_path / "typo" / "ckpt.pth"
  done = _cli("--config", f"{DIGITS}:smoke", "--workdir", str(tmp_path / "w"), f"--config.teacher_dir={tmp_path / 't'}",
              f"--config.teachers[0].checkpoint={missing}", "--config.mode=distill", tmp_path=tmp_path)
  _one_line_error(done, "config.teachers[0].checkpoint", str(missing), "does not exist")
  assert not missing.exists() and not (tmp_path / "typo").exists()


def test_pth_teacher_without_torch_names_the_extra(tmp_path):
  pytest.importorskip("numpy")
  import importlib.util  # pylint: disable=import-outside-toplevel
  if importlib.util.find_spec("torch") is not None:
    pytest.skip("torch is installed here")
  pth = tmp_path / "teacher.pth"
  pth.write_bytes(b"not really a checkpoint")
  done = _cli("--config", f"{DIGITS}:smoke", "--workdir", str(tmp_path / "w"), f"--config.teacher_dir={tmp_path / 't'}",
              f"--config.teachers[0].checkpoint={pth}", f"--config.teachers[1].checkpoint={pth}",
              "--config.mode=distill", tmp_path=tmp_path)
  _one_line_error(done, "needs torch", "pip install -e '.[torch]'")


def test_a_second_run_on_a_busy_workdir_is_refused(tmp_path):
  workdir = tmp_path / "w"
  workdir.mkdir()
  with checkpoint.WorkdirLock(str(workdir)):
    done = _cli("--config", f"{DIGITS}:none,smoke", "--workdir", str(workdir), "--config.mode=distill",
                "--config.epochs=1", tmp_path=tmp_path)
  _one_line_error(done, "is in use by pid", str(os.getpid()))


def test_lock_is_released_with_its_holder(tmp_path):
  with checkpoint.WorkdirLock(str(tmp_path)):
    with pytest.raises(checkpoint.WorkdirLockedError, match="in use by pid"):
      checkpoint.WorkdirLock(str(tmp_path)).__enter__()
  with checkpoint.WorkdirLock(str(tmp_path)):
    pass


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
