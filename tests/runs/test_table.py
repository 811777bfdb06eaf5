"""The runs table: seeds grouped with mean ± std, unfinished runs read from their metrics,
groups told apart by the fields that differ, Markdown and CSV, both command lines."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import numpy as np

from mmkd_jax import config as config_lib
from mmkd_jax.runs import table as runs_table

from helpers import DIGITS, ROOT


def _run_dir(path, seed, top1=None, best=None, lr=0.05, epochs_logged=(), **overrides):
  """A work directory as a run leaves it: config.json, and summary.json when finished."""
  os.makedirs(path)
  config = config_lib.validate(config_lib.load(DIGITS, "aver,smoke", {"seed": seed, "lr": lr, **overrides}))
  with open(os.path.join(path, "config.json"), "w") as f:
    f.write(config.to_json_best_effort())
  if top1 is not None:
    with open(os.path.join(path, "summary.json"), "w") as f:
      json.dump({"status": "finished", "epochs_completed": 1, "final_top1": top1, "best_top1": best,
                 "wall_seconds": 120.0, "code_version": "0.2.0+abc"}, f)
  with open(os.path.join(path, "metrics.jsonl"), "w") as f:
    for epoch, value in epochs_logged:
      f.write(json.dumps({"step": epoch * 10, "time": 1000.0 + 60 * epoch, "epoch": epoch, "test/top1": value}) + "\n")


def test_seeds_group_with_mean_and_sample_std_and_settings_tell_groups_apart(tmp_path):
  _run_dir(tmp_path / "a" / "seed0", 0, 80.0, 81.0)
  _run_dir(tmp_path / "a" / "seed1", 1, 82.0, 83.0)
  _run_dir(tmp_path / "b", 2, epochs_logged=[(1, 70.0), (2, 75.0), (2, 74.0)])  # resumed: epoch 2 again
  _run_dir(tmp_path / "c", 0, 60.0, 61.0, lr=0.2)
  os.makedirs(tmp_path / "a" / "seed0" / "checkpoints" / "x")  # never taken for a run
  rows = runs_table.table_rows([runs_table.read_run(p) for p in runs_table.find_runs([str(tmp_path)])])
  by_setting = {r["setting"]: r for r in rows}
  assert set(by_setting) == {"lr=0.05", "lr=0.2"}
  seeds = by_setting["lr=0.05"]
  assert seeds["seeds"] == "0,1,2" and seeds["status"] == "2 finished, 1 unfinished"
  expected = np.array([80.0, 82.0, 74.0])
  assert seeds["last_top1"] == f"{expected.mean():.2f} ± {expected.std(ddof=1):.2f}"
  best = np.array([81.0, 83.0, 74.0])
  assert seeds["best_top1"] == f"{best.mean():.2f} ± {best.std(ddof=1):.2f}"
  assert by_setting["lr=0.2"]["last_top1"] == "60.00" and by_setting["lr=0.2"]["wall_min"] == "2.0"
  assert seeds["teachers"] == "resnet8 / resnet8" and seeds["method"] == "aver"
  per_run = runs_table.table_rows([runs_table.read_run(p) for p in runs_table.find_runs([str(tmp_path)])], per_run=True)
  assert len(per_run) == 4 and {r["seed"] for r in per_run} == {"0", "1", "2"}


def test_both_command_lines_print_markdown_or_csv_and_refuse_a_missing_directory(tmp_path):
  _run_dir(tmp_path / "r", 0, 80.0, 81.0)
  env = dict(os.environ, PYTHONPATH=ROOT)
  as_module = subprocess.run([sys.executable, "-m", "mmkd_jax.runs", str(tmp_path)], capture_output=True, text=True,
                             env=env, check=True).stdout
  assert as_module.startswith("| method | student |") and "| 80.00 | 81.00 |" in as_module
  as_cli = subprocess.run([sys.executable, "-c", "import sys; from mmkd_jax.main import cli; sys.argv[0] = 'mmkd-jax'; cli()",
                           "runs", str(tmp_path), "--format", "csv"], capture_output=True, text=True, env=env, check=True).stdout
  (row,) = list(csv.DictReader(io.StringIO(as_cli)))
  assert row["last_top1"] == "80.00" and row["code"] == "0.2.0+abc"
  missing = subprocess.run([sys.executable, "-m", "mmkd_jax.runs", str(tmp_path / "nope")], capture_output=True,
                           text=True, env=env)
  assert missing.returncode == 2 and "is not a directory" in missing.stderr and missing.stdout == ""


def test_every_differing_field_is_shown_and_teacher_runs_are_labelled_or_left_out(tmp_path):
  """An AdamW + cosine run of other epochs beside two SGD runs: the setting column names the
  optimiser and schedule of each (it used to show nothing: the epochs told them apart); a teacher's
  training run is left out unless asked for, then labelled as a teacher."""
  _run_dir(tmp_path / "sgd" / "seed0", 0, 80.0, 81.0)
  _run_dir(tmp_path / "sgd" / "seed1", 1, 82.0, 83.0)
  _run_dir(tmp_path / "adamw", 0, 84.0, 84.0, optimizer="adamw", schedule="cosine", epochs=3)
  _run_dir(tmp_path / "teachers" / "digits_s_resnet8a.run", 0, 90.0, 90.0, method="none", student="resnet14")
  rows = runs_table.table_rows([runs_table.read_run(p) for p in runs_table.find_runs([str(tmp_path)])
                                if not runs_table.is_teacher_run(p)])
  settings = {r["epochs"]: r["setting"] for r in rows}
  assert "optimizer=adamw" in settings["3"] and "schedule=cosine" in settings["3"]
  assert "optimizer=sgd" in settings["2"] and "schedule=multistep" in settings["2"]
  env = dict(os.environ, PYTHONPATH=ROOT)
  shown = subprocess.run([sys.executable, "-m", "mmkd_jax.runs", str(tmp_path)], capture_output=True, text=True,
                         env=env, check=True)
  assert "| teacher (" not in shown.stdout and "1 teacher training runs not shown: --teachers" in shown.stderr
  listed = subprocess.run([sys.executable, "-m", "mmkd_jax.runs", str(tmp_path), "--teachers"], capture_output=True,
                          text=True, env=env, check=True).stdout
  assert "| teacher (resnet14) | resnet14 |" in listed
