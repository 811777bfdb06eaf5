"""Runs a results table (settings x methods x seeds) and renders it as the papers do.

    python experiments/reproduce.py --table digits --seeds 3            # this machine: ~1 h CPU
    python experiments/reproduce.py --table cifar100 --collect_only     # table from finished runs
    python experiments/reproduce.py --config configs/digits.py --methods aver,mmkd \
        --seeds 3 --out runs/val --set weights.feat=10.0                # an ad-hoc comparison

Tables are defined in ``experiments/tables.py``. Teachers and teacher caches of each setting
are prepared once (trained / precomputed when missing) and shared by its runs; each (setting,
method, seed) run has its own work directory ``<out>/<setting>/<method>/seed<k>``, and a run
whose ``summary.json`` exists is reused, so an interrupted table continues where it stopped and
runs made elsewhere (e.g. on a GPU cluster, same layout) are collected with ``--collect_only``.
``--set field=value`` overrides win over the methods' presets.

Writes to ``--out``: ``results.md`` (ours: mean +- sample std over seeds of the last-epoch and of
the best-epoch test top-1, next to the published PyTorch number and its source),
``results.json``, and per setting ``curves_<setting>.png`` (test top-1 per epoch, mean over
seeds) and ``weights_<setting>_<method>.png`` (heatmaps of the learned teacher weights over
training, per teacher and per class, seed 0, for methods whose weights change).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tables import TABLES, Published, Row, Table  # pylint: disable=wrong-import-position

from mmkd_jax import config as config_lib  # pylint: disable=wrong-import-position
from mmkd_jax import train  # pylint: disable=wrong-import-position
from mmkd_jax.methods import METHODS  # pylint: disable=wrong-import-position
from mmkd_jax.teachers import lifecycle  # pylint: disable=wrong-import-position

# How each method appears in tables (the papers' names).
DISPLAY = {"none": "Student (no KD)", "kd": "KD (1 teacher)", "aver": "AVER", "ebkd": "EBKD",
           "aekd": "AEKD", "camkd": "CA-MKD", "fitnet": "FitNet-MKD", "amtml": "AMTML-KD",
           "bomd": "BOMD-like", "mmkd": "MMKD"}


def method_config(config, method: str, overrides=(), **fields) -> Any:
  """The setting's (unresolved) config with ``method``, the user's overrides (which win over the
  method's presets) and ``fields``, resolved."""
  c = copy.deepcopy(config)
  config_lib.set_fields(c, {"method": method, **fields})
  return config_lib.resolve(config_lib.set_fields(c, overrides))


def prepare_setting(config, methods, overrides) -> list:
  """Teachers (trained if missing) and one teacher cache per feature layer the methods read."""
  resolved = [config_lib.validate(method_config(config, m, overrides)) for m in methods]
  lifecycle.train_missing_teachers(resolved[0])
  loaded = lifecycle.load_teachers(resolved[0])
  done = set()
  for c in resolved:
    if c.teacher_source == "precomputed" and METHODS.get(c.method).needs_teachers and c.feature_layer not in done:
      lifecycle.precompute(c, loaded)
      done.add(c.feature_layer)
  return loaded


def run_one(config, method: str, seed: int, workdir: str, loaded, overrides=()) -> dict:
  summary_path = os.path.join(workdir, "summary.json")
  if os.path.exists(summary_path):
    with open(summary_path) as f:
      return json.load(f)
  c = config_lib.validate(method_config(config, method, overrides, seed=seed, mode="distill"))
  teachers = loaded if METHODS.get(method).needs_teachers else []
  print(f"== {method} seed {seed} -> {workdir}", flush=True)
  summary = train.train_and_evaluate(c, workdir, teachers, lifecycle.open_cache(c, teachers))
  summary.pop("state", None)
  if summary["status"] != "finished":  # SIGTERM: the run saved a checkpoint; stop the table too
    raise SystemExit(f"{method} seed {seed} stopped ({summary['status']}) in {workdir}; "
                     "run the same command again to continue")
  return summary


def collect(workdir: str) -> dict | None:
  path = os.path.join(workdir, "summary.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def epoch_records(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  by_epoch = {}
  with open(path) as f:
    for record in map(json.loads, f):
      if "test_top1" in record:  # a resumed run logs its epochs again: the last record wins
        by_epoch[record.get("epoch", len(by_epoch) + 1)] = record
  return [by_epoch[e] for e in sorted(by_epoch)]


# ------------------------------------------------------------------------------------------
# Rendering.


def mean_std(values) -> str:
  values = np.asarray(values, float)
  return f"{values.mean():.2f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.2f}"


def render_table(table: Table, results: dict) -> str:
  """Methods down, settings across (the papers' layout); ours next to the published number."""
  header = ["method"]
  for row in table.rows:
    header += [f"{row.label}: ours, last (best)", "published"]
  lines = [f"### {table.title}", "", "| " + " | ".join(header) + " |",
           "|" + "---|" * len(header)]
  teacher_cells, footnotes = ["Teachers (ensemble / each)"], []
  for row in table.rows:
    acc = next((r["teacher_accuracy"] for runs in results[row.label].values() for r in runs
                if r.get("teacher_accuracy")), {})
    ensemble = acc.get("teacher/ensemble")
    each = [v for k, v in acc.items() if k != "teacher/ensemble"]
    teacher_cells += [f"{ensemble:.2f} / " + ", ".join(f"{v:.2f}" for v in each) if acc else "not run", ""]
  lines.append("| " + " | ".join(teacher_cells) + " |")
  for method in table.methods:
    cells = [DISPLAY.get(method, method)]
    for row in table.rows:
      runs = results[row.label].get(method, [])
      if runs:
        finals = [r["final_top1"] for r in runs]
        bests = [r["best_top1"] for r in runs]
        cells.append(f"{mean_std(finals)} ({mean_std(bests)}), n={len(runs)}")
      else:
        cells.append("not run")
      published: Published | None = table.published.get((row.label, method))
      if published is None:
        cells.append("—")
      else:
        footnotes.append(published.source)
        mark = f"[{len(footnotes)}]"
        cells.append(f"{published.top1:.2f} {mark}" if published.top1 is not None else f"n/a {mark}")
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", "Test top-1 (%), mean ± sample std over seeds: last epoch, and in parentheses the best "
            "epoch (the originals report only the best epoch, i.e. model selection on the test set)."]
  lines += [f"[{i}] {s}" for i, s in enumerate(footnotes, 1)]
  if table.note:
    lines += ["", table.note]
  for row in table.rows:
    config_line = (f"`{row.label}`: `{row.config}{':' + row.arg if row.arg else ''}`"
                   + (f" with {', '.join(row.overrides)}" if row.overrides else ""))
    minutes = [r.get("wall_seconds", 0) / 60 for runs in results[row.label].values() for r in runs]
    if minutes:
      config_line += f"; {np.mean(minutes):.1f} min per run on average"
    lines.append(f"- {config_line}")
  return "\n".join(lines) + "\n"


def plot_curves(out: str, row: Row, methods, seeds: int, path: str) -> bool:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(7, 4))
  drawn = False
  for method in methods:
    curves = [[r["test_top1"] for r in epoch_records(os.path.join(out, row.slug, method, f"seed{s}"))]
              for s in range(seeds)]
    curves = [c for c in curves if c]
    if curves:
      length = min(len(c) for c in curves)
      ax.plot(np.arange(1, length + 1), np.mean([c[:length] for c in curves], axis=0),
              label=DISPLAY.get(method, method))
      drawn = True
  if drawn:
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%), mean over seeds")
    ax.set_title(row.label, fontsize=9)
    low = min(line.get_ydata().max() for line in ax.get_lines())
    ax.set_ylim(bottom=max(0.0, low - 15))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
  plt.close(fig)
  return drawn


def plot_weight_heatmap(workdir: str, title: str, path: str) -> bool:
  """Per teacher: mean learned weight of each class (rows) at each epoch (columns)."""
  records = [r for r in epoch_records(workdir) if r.get("train_class_logits_weights")]
  if not records:
    return False
  weights = np.array([[[np.nan if v is None else v for v in cls] for cls in r["train_class_logits_weights"]]
                      for r in records], float)  # (epochs, classes, teachers)
  if np.nanstd(weights) < 1e-6:  # fixed weights (AVER, FitNet): nothing to show
    return False
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  epochs, classes, teachers = weights.shape
  fig, axes = plt.subplots(1, teachers, figsize=(2.2 + 2.6 * teachers, 1.6 + min(0.18 * classes, 9)),
                           sharey=True, squeeze=False, layout="constrained")
  summary = collect(workdir) or {}
  names = [t["name"] for t in summary.get("teachers", [])] or [f"teacher {t}" for t in range(teachers)]
  for t, ax in enumerate(axes[0]):
    image = ax.imshow(weights[:, :, t].T, aspect="auto", origin="lower", vmin=0.0,
                      vmax=max(1.0 / teachers * 2, float(np.nanmax(weights))), cmap="viridis",
                      extent=(0.5, epochs + 0.5, -0.5, classes - 0.5))
    ax.set_title(names[t] if t < len(names) else f"teacher {t}", fontsize=9)
    ax.set_xlabel("epoch")
  axes[0][0].set_ylabel("class")
  fig.colorbar(image, ax=axes[0].tolist(), label="mean weight (train)")
  fig.suptitle(title, fontsize=9)
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


# ------------------------------------------------------------------------------------------


def run_table(table: Table, out: str, seeds: int, overrides, collect_only: bool) -> dict:
  results: dict[str, dict[str, list]] = {}
  for row in table.rows:
    base = config_lib.load(row.config, row.arg, row.overrides)
    results[row.label] = {}
    loaded = None
    for method in table.methods:
      runs = []
      for seed in range(seeds):
        workdir = os.path.join(out, row.slug, method, f"seed{seed}")
        summary = collect(workdir)
        if summary is None and not collect_only:
          if loaded is None:
            loaded = prepare_setting(base, table.methods, overrides)
          summary = run_one(base, method, seed, workdir, loaded, overrides)
        if summary is not None:
          runs.append(summary)
      results[row.label][method] = runs
  return results


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--table", choices=sorted(TABLES), help="a table of experiments/tables.py")
  parser.add_argument("--config", help="instead of --table: one setting, from this config file")
  parser.add_argument("--methods", help="comma-separated methods (default: the table's, or all)")
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--out", help="default runs/reproduce/<table or config name>")
  parser.add_argument("--set", action="append", default=[], help="config override field=value")
  parser.add_argument("--collect_only", action="store_true",
                      help="render from the runs that exist; start none")
  args = parser.parse_args(argv)
  if bool(args.table) == bool(args.config):
    parser.error("give exactly one of --table or --config")
  if args.table:
    table = TABLES[args.table]
    name = args.table
  else:
    name = os.path.splitext(os.path.basename(args.config))[0]
    table = Table(title=f"{name}" + (f" ({', '.join(args.set)})" if args.set else ""),
                  rows=(Row(name, args.config),), methods=tuple(METHODS.names()))
  if args.methods:
    methods = tuple(args.methods.split(","))
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
      parser.error(f"unknown methods {unknown}; known: {', '.join(METHODS.names())}")
    table = Table(table.title, table.rows, methods, table.published, table.note)
  out = args.out or os.path.join("runs", "reproduce", name)
  started = time.time()
  results = run_table(table, out, args.seeds, args.set, args.collect_only)
  os.makedirs(out, exist_ok=True)
  markdown = render_table(table, results)
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write(markdown)
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({"table": table.title, "overrides": args.set, "results": results}, f, indent=2)
  figures = []
  for row in table.rows:
    path = os.path.join(out, f"curves_{row.slug}.png")
    if plot_curves(out, row, table.methods, args.seeds, path):
      figures.append(path)
    for method in table.methods:
      path = os.path.join(out, f"weights_{row.slug}_{method}.png")
      title = f"{DISPLAY.get(method, method)}, {row.label}, seed 0: learned teacher weights (KD term)"
      if plot_weight_heatmap(os.path.join(out, row.slug, method, "seed0"), title, path):
        figures.append(path)
  print(markdown)
  print(f"{(time.time() - started) / 60:.1f} min; figures: {', '.join(figures) or 'none'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
