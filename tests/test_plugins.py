"""A method, a model and a dataset defined outside the package train end to end from the CLI,
and docs/extending.md shows exactly the code that does it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from helpers import ROOT

PLUGIN = os.path.join(ROOT, "tests", "plugin")


def _cli(tmp_path, *flags):
  env = dict(os.environ, TFDS_DATA_DIR=str(tmp_path / "tfds"))
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, "-m", "mmkd_jax.main", "--config", os.path.join(PLUGIN, "my_config.py"),
                         "--workdir", str(tmp_path / "run"), f"--config.teacher_dir={tmp_path / 'teachers'}",
                         *flags], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_user_parts_train_and_evaluate_end_to_end(tmp_path):
  done = _cli(tmp_path, "--config.confident_kd.sharpness=3.0")
  assert done.returncode == 0, done.stderr[-3000:]
  with open(tmp_path / "run" / "summary.json") as f:
    summary = json.load(f)
  assert summary["status"] == "finished" and summary["epochs_completed"] == 10
  assert summary["final_top1"] > 60.0, summary            # 4 classes: chance is 25%
  assert summary["final_top5"] is None                     # top-5 of 4 classes says nothing
  # each compilation is announced before the wait it causes (teachers' and the student's)
  lines = done.stdout.splitlines()
  compiling = [i for i, line in enumerate(lines) if line.startswith("compiling the training step")]
  first_epochs = [i for i, line in enumerate(lines) if line.lstrip().startswith("epoch   1/")]
  assert len(compiling) == len(first_epochs) >= 2 and all(c < e for c, e in zip(compiling, first_epochs)), lines
  assert summary["teacher_accuracy"]["teacher/ensemble"] > 60.0
  with open(tmp_path / "run" / "config.json") as f:
    resolved = json.load(f)
  # The method's own section (overridden from the command line) and its dataset preset applied.
  assert resolved["confident_kd"]["sharpness"] == 3.0 and resolved["temperature"] == 2.0
  with open(tmp_path / "run" / "metrics.jsonl") as f:
    logged = [json.loads(line) for line in f]
  assert any("train/loss_kd" in r for r in logged) and any("train/lr" in r for r in logged)
  evaluated = _cli(tmp_path, "--config.mode=evaluate", "--config.confident_kd.sharpness=3.0")
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert f"on test: top-1 {summary['best_top1']:.2f}%" in evaluated.stdout and "agreement" in evaluated.stdout


def test_extending_doc_shows_the_tested_files():
  with open(os.path.join(ROOT, "docs", "extending.md")) as f:
    doc = f.read()
  blocks = re.findall(r"```python\n# (tests/plugin/\S+)\n(.*?)```", doc, re.S)
  assert {name for name, _ in blocks} == {"tests/plugin/my_parts.py", "tests/plugin/my_config.py"}
  for name, code in blocks:
    with open(os.path.join(ROOT, name)) as f:
      assert f.read() == code, f"docs/extending.md's copy of {name} is out of date"


def test_a_bilevel_method_from_outside_the_package_trains_with_the_hard_buffer(tmp_path):
  """tests/plugin/my_bilevel.py writes only its terms; the look-ahead, the hard buffer, the
  meta-step schedule and the meta update come from mmkd_jax.methods.bilevel. Trained for 11
  steps (meta steps after batches 0, 5 and 10): the buffer holds examples and the learned
  weights moved off uniform."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from mmkd_jax import config as config_lib, registry  # pylint: disable=import-outside-toplevel
  from mmkd_jax.training import run as run_lib  # pylint: disable=import-outside-toplevel
  from mmkd_jax.distill import hard_buffer  # pylint: disable=import-outside-toplevel
  from mmkd_jax.teachers import stages as teacher_stages  # pylint: disable=import-outside-toplevel
  from helpers import digits_smoke, save_random_digits_teachers  # pylint: disable=import-outside-toplevel
  plugin = os.path.join(PLUGIN, "my_bilevel.py")
  registry.import_plugins([plugin])
  save_random_digits_teachers(str(tmp_path / "teachers"))
  smoke = digits_smoke()
  c = config_lib.validate(digits_smoke(teacher_dir=str(tmp_path / "teachers"), data_dir=str(tmp_path / "tfds"),
                                       method="global_weights_kd", imports=(plugin,), teacher_source="online",
                                       stop_at_step=11, async_checkpoints=False,
                                       **{"global_weights_kd.buffer_size": 2 * smoke.batch_size}))
  loaded = teacher_stages.load_teachers(c)
  summary = run_lib.train_and_evaluate(c, str(tmp_path / "run"), loaded, teacher_stages.open_cache(c, loaded), quiet=True)
  state = summary["state"]
  assert isinstance(state.buffer, hard_buffer.HardBuffer) and int(state.buffer.count) == 2 * c.batch_size
  v = np.asarray(state.meta_params["v"])
  counts = [int(x) for path, x in jax.tree_util.tree_flatten_with_path(state.meta_opt_state)[0]
            if "count" in jax.tree_util.keystr(path)]
  assert np.abs(v).max() > 0 and counts == [3]


def test_a_plugin_section_is_set_from_the_command_line_once_imports_names_its_module(tmp_path):
  """No import order to respect: a config that never imported the plug-in, --config.imports naming
  it, and an override of a field in the plug-in method's own section, in one fresh process."""
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  oracle = os.path.join(ROOT, "experiments", "oracle.py")
  done = subprocess.run([sys.executable, "-m", "mmkd_jax.main", "--config", "digits", f"--config.imports=('{oracle}',)",
                         "--config.method=oracle", "--config.oracle.competence=0,1,2,3,4|5,6,7,8,9",
                         "--config.mode=show_config"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert re.search(r'^oracle\.competence +"0,1,2,3,4\|5,6,7,8,9"', done.stdout, re.M), done.stdout[-3000:]
