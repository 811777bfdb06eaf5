"""Runs a results table (settings x methods x seeds) and renders it as the papers do.

    python experiments/reproduce.py --table digits --seeds 3            # this machine: ~1 h CPU
    python experiments/reproduce.py --table cifar100 --collect_only     # table from finished runs
    python experiments/reproduce.py --table digits --seeds 3 --replicas # seeds as replicas of one program
    python experiments/reproduce.py --config configs/digits.py --methods aver,mmkd \
        --seeds 3 --out runs/val --set weights.feat=10.0                # an ad-hoc comparison

Tables are defined in ``experiments/tables.py``. Teachers and teacher caches of each setting
are prepared once (trained / precomputed when missing) and shared by its runs; each (setting,
method, seed) run has its own work directory ``<out>/<setting>/<method>/seed<k>``, and a run
whose ``summary.json`` exists is reused, so an interrupted table continues where it stopped and
runs made elsewhere (e.g. on a GPU cluster, same layout) are collected with ``--collect_only``.
``--set field=value`` overrides win over the methods' presets.

A table's entries are methods or ``Variant``s (a method with overrides, for ablations); tables
of one ``group`` share run directories (an ablation reuses the main table's runs).

Writes to ``--out`` (default ``runs/reproduce/<group or table>``): ``results_<table>.md`` (ours:
mean +- sample std over seeds of the last-epoch and of the best-epoch top-1, minutes per run, the
published PyTorch number and its source; for ablations, differences to the baseline with 2
standard errors), ``results_<table>.json``, ``curves_<table>_<setting>.png`` (top-1 per epoch,
mean and min..max band over seeds) and ``weights_<setting>_<variant>.png`` (heatmaps of the
learned teacher weights over training, per teacher and per class, seed 0).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import shutil
import sys
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tables import TABLES, Published, Row, Table, Variant  # pylint: disable=wrong-import-position
import routing  # pylint: disable=wrong-import-position

from mmkd_jax import config as config_lib  # pylint: disable=wrong-import-position
from mmkd_jax import replicas, train  # pylint: disable=wrong-import-position
from mmkd_jax.methods import METHODS  # pylint: disable=wrong-import-position
from mmkd_jax.main import resolve_config_path  # pylint: disable=wrong-import-position
from mmkd_jax.runs import Preempted  # pylint: disable=wrong-import-position
from mmkd_jax.runs_table import eval_top1, mean_std  # pylint: disable=wrong-import-position
from mmkd_jax import teacher_stages  # pylint: disable=wrong-import-position

# How each method appears in tables (the papers' names).
DISPLAY = {"none": "Student (no KD)", "kd": "KD (1 teacher)", "aver": "AVER", "ebkd": "EBKD",
           "aekd": "AEKD", "camkd": "CA-MKD", "fitnet": "FitNet-MKD", "amtml": "AMTML-KD",
           "bomd": "BOMD-like", "mmkd": "MMKD"}


def display(variant: Variant) -> str:
  if variant.label:
    return variant.label
  name = DISPLAY.get(variant.method, variant.method)
  return f"{name} ({', '.join(variant.overrides)})" if variant.overrides else name


def method_config(config, method: str, overrides=(), **fields) -> Any:
  """The setting's (unresolved) config with ``method``, the user's overrides (which win over the
  method's presets) and ``fields``, resolved."""
  c = copy.deepcopy(config)
  config_lib.set_fields(c, {"method": method, **fields})
  return config_lib.resolve(config_lib.set_fields(c, overrides))


def prepare_setting(config, variants, overrides) -> list:
  """Teachers (trained if missing) and one teacher cache per feature layer the variants read."""
  resolved = [config_lib.validate(method_config(config, v.method, (*v.overrides, *overrides))) for v in variants]
  teacher_stages.train_missing_teachers(resolved[0])
  loaded = teacher_stages.load_teachers(resolved[0])
  done = set()
  for c in resolved:
    if c.teacher_source == "precomputed" and METHODS.get(c.method).needs_teachers and c.feature_layer not in done:
      teacher_stages.precompute(c, loaded)
      done.add(c.feature_layer)
  return loaded


def run_one(config, variant: Variant, seed: int, workdir: str, loaded, overrides=()) -> dict:
  summary_path = os.path.join(workdir, "summary.json")
  if os.path.exists(summary_path):
    with open(summary_path) as f:
      return json.load(f)
  c = config_lib.validate(method_config(config, variant.method, (*variant.overrides, *overrides),
                                        seed=seed, mode="distill"))
  teachers = loaded if METHODS.get(variant.method).needs_teachers else []
  print(f"== {display(variant)} seed {seed} -> {workdir}", flush=True)
  summary = train.train_and_evaluate(c, workdir, teachers, teacher_stages.open_cache(c, teachers))
  summary.pop("state", None)
  if summary["status"] != "finished":  # SIGTERM: the run saved a checkpoint; stop the table too
    raise SystemExit(f"{display(variant)} seed {seed} stopped ({summary['status']}) in {workdir}; "
                     "run the same command again to continue")
  return summary


def run_replicas(config, variant: Variant, seeds: list[int], workdir: str, loaded, overrides=()) -> None:
  """The seeds of one variant as replicas of one program (mmkd_jax/replicas.py); each writes
  ``<workdir>/seed<s>/``, the layout of single runs."""
  c = config_lib.validate(method_config(config, variant.method, (*variant.overrides, *overrides),
                                        replicas=",".join(map(str, seeds)), mode="distill"))
  teachers = loaded if METHODS.get(variant.method).needs_teachers else []
  print(f"== {display(variant)} seeds {seeds} as replicas -> {workdir}", flush=True)
  result = replicas.train_replicas(c, workdir, teachers, teacher_stages.open_cache(c, teachers))
  unfinished = [s["seed"] for s in result["replicas"] if s["status"] == "preempted"]
  if unfinished:
    raise SystemExit(f"{display(variant)} seeds {unfinished} stopped in {workdir}; run the same command again")


def collect(workdir: str) -> dict | None:
  """A finished run's summary, with its test routing (``routing.json``) under "routing" if measured."""
  path = os.path.join(workdir, "summary.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    summary = json.load(f)
  if os.path.exists(os.path.join(workdir, routing.ROUTING_FILE)):
    with open(os.path.join(workdir, routing.ROUTING_FILE)) as f:
      summary["routing"] = json.load(f)
  return summary


RECORD_FILES = ("summary.json", "metrics.jsonl", "config.json", routing.ROUTING_FILE)


def keep_records(workdir: str, keep: str) -> None:
  """Copy a finished run's records (not its checkpoints) to ``keep``, the directory to commit."""
  if os.path.abspath(workdir) == os.path.abspath(keep):
    return
  os.makedirs(keep, exist_ok=True)
  for name in RECORD_FILES:
    if os.path.exists(os.path.join(workdir, name)):
      shutil.copyfile(os.path.join(workdir, name), os.path.join(keep, name))


def epoch_records(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  by_epoch = {}
  with open(path) as f:
    for record in map(json.loads, f):
      if eval_top1(record) is not None:  # a resumed run logs its epochs again: the last record wins
        by_epoch[record.get("epoch", len(by_epoch) + 1)] = record
  return [by_epoch[e] for e in sorted(by_epoch)]


# ------------------------------------------------------------------------------------------
# Rendering.


def class_weights(record: dict):
  return record.get("teacher_weights/per_class", record.get("train_class_logits_weights"))


def _minutes(runs) -> str:
  return f"{np.mean([r.get('wall_seconds', 0) / 60 for r in runs]):.1f}" if runs else "—"


def _settings_line(runs) -> str:
  """How the runs were made (teacher source, cache, replays), from their summaries."""
  seen = sorted({json.dumps(r.get("setting", {}), sort_keys=True) for r in runs if r.get("setting")})
  return "; ".join(", ".join(f"{k} {v}" for k, v in json.loads(s).items()) for s in seen) or "not recorded"


def _teacher_warning(runs) -> list[str]:
  """A line if the runs of one setting distilled from different teachers (weights fingerprints),
  e.g. a teacher retrained on another machine between the runs of a table."""
  sets: dict[str, int] = {}
  for r in runs:
    if r.get("teachers"):  # no-KD runs have none
      key = ", ".join(f"{t['name']} {t.get('fingerprint')}" for t in r["teachers"])
      sets[key] = sets.get(key, 0) + 1
  if len(sets) < 2:
    return []
  return [f"- WARNING: these runs distilled from {len(sets)} different teacher sets: "
          + "; ".join(f"{n} runs from {key}" for key, n in sorted(sets.items()))]


def render_table(table: Table, results: dict) -> str:
  """Methods down, settings across (the papers' layout); ours next to the published number."""
  routed = any("routing" in r for row in table.rows for runs in results[row.label].values() for r in runs)
  header = ["method"]
  for row in table.rows:
    header += [f"{row.label}: ours, last (best)", "min/run", "published"]
    header += ["weight on competent teachers (test)"] if routed else []
  lines = [f"### {table.title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  teacher_cells, footnotes = ["Teachers (ensemble / each)"], []
  for row in table.rows:
    acc = next((r["teacher_accuracy"] for runs in results[row.label].values() for r in runs
                if r.get("teacher_accuracy")), {})
    ensemble = acc.get("teacher/ensemble")
    each = [f"{k.split('/', 1)[1]} {v:.2f}" for k, v in acc.items() if k != "teacher/ensemble"]
    teacher_cells += [f"{ensemble:.2f} / " + ", ".join(each) if acc else "not run", "", ""] + ([""] if routed else [])
  lines.append("| " + " | ".join(teacher_cells) + " |")
  for variant in table.variants:
    cells = [display(variant)]
    for row in table.rows:
      runs = results[row.label].get(variant.slug, [])
      cells.append(f"{mean_std([r['final_top1'] for r in runs])} ({mean_std([r['best_top1'] for r in runs])}), "
                   f"n={len(runs)}" if runs else "not run")
      cells.append(_minutes(runs))
      published: Published | None = table.published.get((row.label, variant.method)) if not variant.overrides else None
      if published is None:
        cells.append("—")
      else:
        footnotes.append(published.source)
        mark = f"[{len(footnotes)}]"
        cells.append(f"{published.top1:.2f} {mark}" if published.top1 is not None else f"n/a {mark}")
      if routed:
        shares = [r["routing"]["competent_share"] for r in runs if "routing" in r]
        cells.append(mean_std(shares, 3) if shares else "—")
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", "Top-1 (%) on the evaluation split, mean ± sample std over seeds: last epoch, and in parentheses "
            "the best epoch (the originals report only the best epoch, i.e. model selection on the test set). "
            "min/run: wall minutes per run on the machine that ran it."]
  if routed:
    lines += ["Weight on competent teachers: the share of each test sample's KD weight mass on the teachers "
              "competent for its label (experiments/routing.py), mean over the test split, mean ± std over "
              "seeds; uniform weights give (competent teachers / teachers)."]
  lines += [f"[{i}] {s}" for i, s in enumerate(footnotes, 1)]
  if table.note:
    lines += ["", table.note]
  for row in table.rows:
    all_runs = [r for runs in results[row.label].values() for r in runs]
    lines.append(f"- `{row.label}`: `{row.config}{':' + row.arg if row.arg else ''}`"
                 + (f" with {', '.join(row.overrides)}" if row.overrides else "")
                 + f"; runs made with: {_settings_line(all_runs)}")
    versions = sorted({r.get("code_version", "unrecorded") for r in all_runs})
    if len(versions) > 1:  # a reused run from other code: the table mixes versions
      lines.append(f"- WARNING: these runs come from {len(versions)} code versions: {', '.join(versions)}")
    lines += _teacher_warning(all_runs)
  for baseline in table.baselines:
    lines += ["", render_differences(table, results, baseline)]
  return "\n".join(lines) + "\n"


def render_differences(table: Table, results: dict, baseline: str) -> str:
  """Each variant against ``baseline``: the difference of mean last-epoch top-1 with its
  standard error sqrt(s1^2/n1 + s2^2/n2); only a difference beyond 2 SE is called one."""
  name = next((display(v) for v in table.variants if v.slug == baseline), baseline)
  lines = [f"Differences to {name} (last epoch; 'yes' = |difference| > 2 standard errors):", "",
           "| variant | difference (points) | 2 SE | beyond 2 SE |", "|---|---|---|---|"]
  for row in table.rows:
    base = [r["final_top1"] for r in results[row.label].get(baseline, [])]
    for variant in table.variants:
      runs = [r["final_top1"] for r in results[row.label].get(variant.slug, [])]
      if variant.slug == baseline or len(runs) < 2 or len(base) < 2:
        continue
      diff = np.mean(runs) - np.mean(base)
      se = np.sqrt(np.var(runs, ddof=1) / len(runs) + np.var(base, ddof=1) / len(base))
      lines.append(f"| {display(variant)} | {diff:+.2f} | {2 * se:.2f} | {'yes' if abs(diff) > 2 * se else 'no'} |")
  return "\n".join(lines)


def plot_routing(table: Table, row: Row, results: dict, path: str) -> bool:
  """Per method (rows) and class (columns): the share of the test weight mass on the competent
  teachers, mean over seeds; the overall share in the row label."""
  names, values = [], []
  for variant in table.variants:
    records = [r["routing"] for r in results[row.label].get(variant.slug, []) if "routing" in r]
    if records:
      per_class = np.array([[np.nan if v is None else v for v in rec["competent_share_per_class"]] for rec in records])
      values.append(np.nanmean(per_class, axis=0))
      names.append(f"{display(variant)} ({np.mean([rec['competent_share'] for rec in records]):.2f})")
  if not values:
    return False
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  values = np.array(values)
  fig, ax = plt.subplots(figsize=(2.5 + 0.55 * values.shape[1], 1.2 + 0.36 * len(names)), layout="constrained")
  image = ax.imshow(values, aspect="auto", vmin=0.0, vmax=1.0, cmap="viridis")
  for (i, k), v in np.ndenumerate(values):
    ax.text(k, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if v < 0.6 else "black")
  ax.set_yticks(range(len(names)), names, fontsize=7)
  ax.set_xticks(range(values.shape[1]))
  ax.set_xlabel("class (test split)")
  fig.colorbar(image, ax=ax, label="weight share on competent teachers")
  ax.set_title(f"{row.label}: where the KD weight goes (mean over seeds)", fontsize=8)
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def curve_points(out: str, row: Row, variant: Variant, seeds: int) -> tuple[list[int], np.ndarray]:
  """(epochs evaluated in every seed, top-1 per seed and epoch) of a variant's runs."""
  curves = [{r.get("epoch", i + 1): eval_top1(r) for i, r in enumerate(epoch_records(
      os.path.join(out, row.slug, variant.slug, f"seed{s}")))} for s in range(seeds)]
  curves = [c for c in curves if c]
  epochs = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
  return epochs, np.array([[c[e] for e in epochs] for c in curves])


def plot_curves(out: str, row: Row, variants, seeds: int, path: str) -> bool:
  """Evaluation top-1 per epoch: mean over seeds, with a band from the lowest to the highest seed."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  from matplotlib.ticker import MaxNLocator  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(7.5, 4.2))
  drawn, lows = False, []
  for index, variant in enumerate(variants):
    epochs, values = curve_points(out, row, variant, seeds)
    if epochs:
      # markers: a run of one epoch (or one evaluation) is a point, not an invisible line; past the
      # 10 colours of the cycle, dashed lines keep the rows apart
      line, = ax.plot(epochs, values.mean(axis=0), marker="o", markersize=3, label=display(variant),
                      linestyle="-" if index < 10 else "--")
      if len(values) > 1:
        ax.fill_between(epochs, values.min(axis=0), values.max(axis=0), color=line.get_color(), alpha=0.15)
      lows.append(values.mean(axis=0).max())
      drawn = True
  if drawn:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("top-1 (%): mean, band = min..max over seeds")
    ax.set_title(row.label, fontsize=9)
    ax.set_ylim(bottom=max(0.0, min(lows) - 15))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
  plt.close(fig)
  return drawn


def plot_weight_heatmap(workdir: str, title: str, path: str) -> bool:
  """Per teacher: mean learned weight of each class (rows) at each epoch (columns)."""
  records = [r for r in epoch_records(workdir) if class_weights(r)]
  if not records:
    return False
  weights = np.array([[[np.nan if v is None else v for v in cls] for cls in class_weights(r)]
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


def run_table(table: Table, out: str, seeds: int, overrides, collect_only: bool,
              as_replicas: bool = False, keep: str = "") -> dict:
  """{row label: {variant slug: [summaries]}}; finished runs are reused, missing ones run
  (``as_replicas``: a variant's missing seeds together, as replicas of one program); ``keep``: where
  each finished run's records are copied, in the same layout."""
  results: dict[str, dict[str, list]] = {}
  for row in table.rows:
    base = config_lib.load(row.config, row.arg, row.overrides)
    results[row.label] = {}
    loaded = None
    for variant in table.variants:
      missing = [s for s in range(seeds) if collect(os.path.join(out, row.slug, variant.slug, f"seed{s}")) is None]
      if as_replicas and missing and not collect_only:
        if loaded is None:
          loaded = prepare_setting(base, table.variants, overrides)
        run_replicas(base, variant, missing, os.path.join(out, row.slug, variant.slug), loaded, overrides)
      runs = []
      for seed in range(seeds):
        workdir = os.path.join(out, row.slug, variant.slug, f"seed{seed}")
        summary = collect(workdir)
        if summary is None and not collect_only:
          if loaded is None:
            loaded = prepare_setting(base, table.variants, overrides)
          summary = run_one(base, variant, seed, workdir, loaded, overrides)
        if summary is not None and not collect_only:  # measured once; again if the competence changed
          if routing.measure_and_store(workdir, row.competence) is not None:
            summary = collect(workdir)
        if summary is not None:
          runs.append(summary)
          if keep:
            keep_records(workdir, os.path.join(keep, row.slug, variant.slug, f"seed{seed}"))
      results[row.label][variant.slug] = runs
  return results


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--table", choices=sorted(TABLES), help="a table of experiments/tables.py")
  parser.add_argument("--config", help="instead of --table: one setting, in any form --config of mmkd_jax.main "
                      "takes (configs/digits.py:smoke, digits:aver, a run's config.json)")
  parser.add_argument("--methods", help="comma-separated methods (default: the table's, or all)")
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--out", help="default runs/reproduce/<table or config name>")
  parser.add_argument("--set", action="append", default=[], help="config override field=value")
  parser.add_argument("--replicas", action="store_true",
                      help="train a variant's seeds together as replicas of one program (config.replicas)")
  parser.add_argument("--keep", default="", help="copy each finished run's records (summary, metrics, "
                      "config, routing; no checkpoints) to this directory, same layout (to commit them)")
  parser.add_argument("--collect_only", action="store_true",
                      help="render from the runs that exist; start none")
  args = parser.parse_args(argv)
  if bool(args.table) == bool(args.config):
    parser.error("give exactly one of --table or --config")
  if args.table:
    table = TABLES[args.table]
    name = args.table
  else:
    path, _, arg = resolve_config_path(args.config).partition(":")
    name = os.path.splitext(os.path.basename(arg if path.endswith("run.py") else path))[0]
    table = Table(title=f"{name}" + (f" ({', '.join(args.set)})" if args.set else ""),
                  rows=(Row(name, path, arg or None),), methods=tuple(METHODS.names()))
  if args.methods:  # a subset of the table's variants (by method or slug), or plain methods
    wanted = args.methods.split(",")
    known = {v.slug: v for v in table.variants}
    chosen = tuple(v for v in table.variants if v.method in wanted or v.slug in wanted)
    extra = tuple(Variant(m) for m in wanted if m not in known and not any(v.method == m for v in chosen))
    unknown = [v.method for v in extra if v.method not in METHODS]
    if unknown:
      parser.error(f"unknown methods {unknown}; known: {', '.join(METHODS.names())}")
    table = dataclasses.replace(table, methods=chosen + extra)
  out = args.out or os.path.join("runs", "reproduce", table.group or name)
  started = time.time()
  try:
    results = run_table(table, out, args.seeds, args.set, args.collect_only, args.replicas, args.keep)
  except Preempted as e:  # SIGTERM while preparing teachers: their checkpoints are saved
    print(f"{e}", file=sys.stderr)
    return 1
  os.makedirs(out, exist_ok=True)
  markdown = render_table(table, results)
  with open(os.path.join(out, f"results_{name}.md"), "w") as f:
    f.write(markdown)
  with open(os.path.join(out, f"results_{name}.json"), "w") as f:
    json.dump({"table": table.title, "overrides": args.set, "results": results}, f, indent=2)
  figures = []
  for row in table.rows:
    path = os.path.join(out, f"curves_{name}_{row.slug}.png")
    if plot_curves(out, row, table.variants, args.seeds, path):
      figures.append(path)
    path = os.path.join(out, f"routing_{name}_{row.slug}.png")
    if plot_routing(table, row, results, path):
      figures.append(path)
    for variant in table.variants:
      path = os.path.join(out, f"weights_{row.slug}_{variant.slug}.png")
      title = f"{display(variant)}, {row.label}, seed 0: learned teacher weights (KD term)"
      if plot_weight_heatmap(os.path.join(out, row.slug, variant.slug, "seed0"), title, path):
        figures.append(path)
  print(markdown)
  print(f"{(time.time() - started) / 60:.1f} min; figures: {', '.join(figures) or 'none'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
