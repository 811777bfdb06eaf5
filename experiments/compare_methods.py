"""Runs several methods x seeds on one config and writes a results table and a bar chart.

    python experiments/compare_methods.py --config configs/digits_mmkd.py --seeds 3 \
        [--methods none,aver,mmkd] [--out runs/compare] [--set epochs=20 --set kd.beta=50]

Teachers and the teacher cache are prepared once (trained/precomputed if missing) and shared by
every run. Each (method, seed) run has its own work directory under ``--out``; a run whose
``summary.json`` exists is reused, so an interrupted comparison continues where it stopped.
Writes ``<out>/results.md`` (mean +- std of the final and the best-epoch test top-1),
``<out>/results.png`` (bar chart) and ``<out>/curves.png`` (test accuracy per epoch).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time

import numpy as np
from ml_collections import config_flags

from mmkd_jax import main as cli
from mmkd_jax import train
from mmkd_jax.config_methods import apply_method
from mmkd_jax.distill.methods import METHODS

# How each method appears in tables (the papers' names).
DISPLAY = {"none": "Student (no KD)", "kd": "KD (1 teacher)", "aver": "AVER", "ebkd": "EBKD",
           "aekd": "AEKD", "camkd": "CA-MKD", "fitnet": "FitNet-MKD", "amtml": "AMTML-KD",
           "bomd": "BOMD-like", "mmkd": "MMKD"}


def load_config(path: str, overrides: list[str]):
  config = config_flags.config_flags._LoadConfigModule("config", path).get_config(None)  # pylint: disable=protected-access
  return apply_overrides(config, overrides)


def apply_overrides(config, overrides: list[str]):
  for item in overrides:
    key, value = item.split("=", 1)
    target = config
    *parents, leaf = key.split(".")
    for p in parents:
      target = target[p]
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass
    target[leaf] = value
  return config


def run_one(config, method: str, seed: int, workdir: str, loaded, overrides=()) -> dict:
  summary_path = os.path.join(workdir, "summary.json")
  if os.path.exists(summary_path):
    with open(summary_path) as f:
      return json.load(f)
  # The method's preset, then the user's overrides (which win).
  c = apply_overrides(apply_method(config.copy_and_resolve_references(), method), list(overrides))
  c.seed, c.mode = seed, "distill"
  cli.validate(c)
  teachers = loaded if method != "none" else []
  print(f"== {method} seed {seed} -> {workdir}", flush=True)
  summary = train.train_and_evaluate(c, workdir, teachers, cli.open_cache(c, teachers) if teachers else None)
  summary.pop("state", None)
  return summary


def mean_std(values) -> str:
  values = np.asarray(values, float)
  return f"{values.mean():.2f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.2f}"


def write_table(results: dict, config, path: str) -> None:
  lines = [f"Dataset `{config.dataset}`, student `{config.student}`, teachers "
           + ", ".join(f"`{t.arch}`" for t in config.teachers) + f", {config.epochs} epochs.", "",
           "| method | final top-1 (%) | best-epoch top-1 (%) | seeds | minutes per run |",
           "|---|---|---|---|---|"]
  for method, runs in results.items():
    finals = [r["final_top1"] for r in runs]
    bests = [r["best_top1"] for r in runs]
    minutes = np.mean([r.get("wall_seconds", 0) for r in runs]) / 60
    lines.append(f"| {DISPLAY.get(method, method)} | {mean_std(finals)} | {mean_std(bests)} | "
                 f"{len(runs)} | {minutes:.1f} |")
  teacher_acc = next((r["teacher_accuracy"] for runs in results.values() for r in runs
                      if r.get("teacher_accuracy")), {})
  if teacher_acc:
    lines += ["", "Teachers (test top-1): " + ", ".join(f"{k.split('/')[-1]} {v:.2f}%"
                                                      for k, v in teacher_acc.items())]
  lines += ["", "Final = last epoch; best-epoch = maximum over epochs of the test accuracy "
            "(the originals report only the latter). Mean ± sample std over seeds."]
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def write_chart(results: dict, path: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  names = [DISPLAY.get(m, m) for m in results]
  finals = [np.asarray([r["final_top1"] for r in runs]) for runs in results.values()]
  fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(names), 3.6))
  ax.bar(names, [f.mean() for f in finals], yerr=[f.std(ddof=1) if len(f) > 1 else 0 for f in finals],
         capsize=4, color="#4c72b0")
  for i, f in enumerate(finals):
    ax.scatter(np.full(len(f), i), f, color="k", s=10, zorder=3)
  low = min(f.min() for f in finals)
  ax.set_ylim(max(0, low - 3), min(100, max(f.max() for f in finals) + 1.5))
  ax.set_ylabel("final test top-1 (%)")
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def write_curves(out: str, methods, seeds: int, path: str) -> None:
  """Test top-1 per epoch, mean over seeds, one line per method (from each run's metrics.jsonl)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(7, 4))
  for method in methods:
    curves = []
    for seed in range(seeds):
      metrics = os.path.join(out, method, f"seed{seed}", "metrics.jsonl")
      if os.path.exists(metrics):
        with open(metrics) as f:
          records = [json.loads(line) for line in f]
        curves.append([r["test_top1"] for r in records if "test_top1" in r])
    if curves:
      length = min(len(c) for c in curves)
      mean = np.mean([c[:length] for c in curves], axis=0)
      ax.plot(np.arange(1, length + 1), mean, label=DISPLAY.get(method, method))
  ax.set_xlabel("epoch")
  ax.set_ylabel("test top-1 (%), mean over seeds")
  ax.set_ylim(bottom=80)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True)
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--out", default="runs/compare")
  parser.add_argument("--set", action="append", default=[], help="config override field=value")
  args = parser.parse_args(argv)
  config = load_config(args.config, args.set)
  methods = args.methods.split(",")
  unknown = [m for m in methods if m not in METHODS]
  if unknown:
    parser.error(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
  cli.validate(config)
  cli.train_missing_teachers(config)
  loaded = cli.load_teachers(config)
  if config.teacher_source == "precomputed":
    # One cache per feature layer the methods use (FitNet hints read feat[2]).
    for layer in sorted({apply_method(config.copy_and_resolve_references(), m).feature_layer for m in methods}):
      c = config.copy_and_resolve_references()
      c.feature_layer = layer
      cli.precompute(c, cli.load_teachers(c))
  started = time.time()
  results = {m: [run_one(config, m, seed, os.path.join(args.out, m, f"seed{seed}"), loaded, args.set)
                 for seed in range(args.seeds)] for m in methods}
  os.makedirs(args.out, exist_ok=True)
  write_table(results, config, os.path.join(args.out, "results.md"))
  write_chart(results, os.path.join(args.out, "results.png"))
  write_curves(args.out, methods, args.seeds, os.path.join(args.out, "curves.png"))
  with open(os.path.join(args.out, "results.md")) as f:
    print(f.read())
  print(f"total {(time.time() - started) / 60:.1f} min; chart {os.path.join(args.out, 'results.png')}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
