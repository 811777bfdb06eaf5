"""mmkd_jax.runs.plots: ``mmkd-jax plot`` draws several runs' records on one figure per quantity."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from PIL import Image

from mmkd_jax.runs import plots

from helpers import ROOT


def _run(path, top1, weights=None):
  """A run's metrics.jsonl: windows with loss and lr, epochs with accuracy (and teacher weights)."""
  os.makedirs(path)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump({"method": "mmkd" if weights else "aver", "seed": 0}, f)
  with open(os.path.join(path, "metrics.jsonl"), "w") as f:
    for epoch in (1, 2, 3):
      for step in range(10 * epoch - 5, 10 * epoch + 1, 5):
        f.write(json.dumps({"step": step, "time": 0.0, "train/loss": 2.0 / step, "train/lr": 0.05}) + "\n")
      record = {"step": 10 * epoch, "epoch": epoch, "test/top1": top1 + epoch, "test/loss": 1.0 / epoch,
                "train/accuracy": top1 + 2 * epoch}
      if weights:
        record.update({f"teacher_weights/logits/t{i}": w for i, w in enumerate(weights)})
        record.update({f"teacher_weights/feature/t{i}": 1.0 / len(weights) for i in range(len(weights))})
      f.write(json.dumps(record) + "\n")
    f.write(json.dumps({"step": 30, "epoch": 3, "test/top1": top1 + 3.5}) + "\n")  # resumed: the last wins


def test_runs_are_drawn_on_one_figure_per_quantity(tmp_path):
  _run(tmp_path / "runs" / "aver" / "seed0", 80.0)
  _run(tmp_path / "runs" / "mmkd" / "seed0", 82.0, weights=(0.2, 0.8))
  epochs, windows = plots.records(str(tmp_path / "runs" / "aver" / "seed0"))
  assert [r["epoch"] for r in epochs] == [1, 2, 3] and epochs[-1]["test/top1"] == 83.5 and len(windows) == 6
  assert plots.labels(["/a/aver/seed0", "/a/mmkd/seed0"]) == ["aver/seed0", "mmkd/seed0"]
  done = subprocess.run([sys.executable, "-c", "import sys; from mmkd_jax.main import cli; sys.argv[0] = 'mmkd-jax'; cli()",
                         "plot", str(tmp_path / "runs"), "--out", str(tmp_path / "plots")], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.startswith("2 runs plotted: ")
  names = sorted(os.listdir(tmp_path / "plots"))
  assert names == ["accuracy.png", "loss.png", "lr.png", "teacher_weights.png"]
  for name in names:
    with Image.open(tmp_path / "plots" / name) as image:
      assert image.format == "PNG" and image.size[0] > 500
  done = subprocess.run([sys.executable, "-m", "mmkd_jax.runs.plots", str(tmp_path / "runs" / "aver")], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0 and "1 run plotted" in done.stdout  # no learned weights: no weights figure
  assert sorted(os.listdir(tmp_path / "runs" / "aver" / "seed0" / "plots")) == ["accuracy.png", "loss.png", "lr.png"]
  missing = subprocess.run([sys.executable, "-m", "mmkd_jax.runs.plots", str(tmp_path / "nope")], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
  assert missing.returncode == 2 and "is not a directory" in missing.stderr
