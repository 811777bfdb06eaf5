"""Real kills: SIGKILL at six points of a pipeline run (teacher training, precompute, mid-epoch
before any checkpoint, during an asynchronous checkpoint write, mid-epoch after an epoch boundary,
right after a completed checkpoint), each followed by the same command; the final student, the
teachers and the metrics equal an uninterrupted run bit for bit (CPU, precomputed teacher cache)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from helpers import DIGITS, ROOT

KILLS = [("teacher_step", 5), ("precompute", 3), ("step", 10), ("async_save", 1), ("step", 8), ("after_epoch", 1)]


def _env(tmp_path):
  env = dict(os.environ, TFDS_DATA_DIR=str(tmp_path / "tfds"), PYTHONUNBUFFERED="1")
  env.pop("XLA_FLAGS", None)
  return env


def _args(tmp_path, name):
  return ["--config", f"{DIGITS}:smoke", "--workdir", str(tmp_path / name / "run"),
          f"--config.teacher_dir={tmp_path / name / 'teachers'}", "--config.epochs=3", "--config.lr_milestones=(2,)"]


def _final_state(workdir):
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  tree = ocp.PyTreeCheckpointer().restore(os.path.join(workdir, "checkpoints", str(steps[-1]), "state"))
  import jax  # pylint: disable=import-outside-toplevel
  return steps[-1], {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _fingerprints(teacher_dir):
  out = {}
  for name in sorted(os.listdir(teacher_dir)):
    meta = os.path.join(teacher_dir, name, "teacher.json")
    if os.path.isfile(meta):
      with open(meta) as f:
        out[name] = json.load(f)["fingerprint"]
  return out


@pytest.mark.slow
def test_sigkill_at_six_points_then_resume_is_bit_identical(tmp_path):
  env = _env(tmp_path)
  reference = subprocess.run([sys.executable, "-m", "mmkd_jax.main", *_args(tmp_path, "ref")], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=1200)
  assert reference.returncode == 0, reference.stderr[-3000:]
  for point, n in KILLS:
    killed = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "kill_worker.py"), point, str(n), "--",
                             *_args(tmp_path, "killed")], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=1200)
    assert killed.returncode == -signal.SIGKILL, (point, killed.returncode, killed.stderr[-3000:])
  final = subprocess.run([sys.executable, "-m", "mmkd_jax.main", *_args(tmp_path, "killed")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=1200)
  assert final.returncode == 0, final.stderr[-3000:]
  assert _fingerprints(tmp_path / "killed" / "teachers") == _fingerprints(tmp_path / "ref" / "teachers")
  step_a, a = _final_state(tmp_path / "ref" / "run")
  step_b, b = _final_state(tmp_path / "killed" / "run")
  assert step_a == step_b == 66 and a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  summaries = [json.load(open(tmp_path / name / "run" / "summary.json")) for name in ("ref", "killed")]
  assert summaries[0]["final_top1"] == summaries[1]["final_top1"]
  assert summaries[0]["best_top1"] == summaries[1]["best_top1"]
