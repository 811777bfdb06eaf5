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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tables import TABLES, Row, Table, Variant  # pylint: disable=wrong-import-position
from render import display, plot_curves, plot_routing, plot_weight_heatmap, render_table  # pylint: disable=wrong-import-position
import routing  # pylint: disable=wrong-import-position

from mmkd_jax.training import compilation
from mmkd_jax.training import run as run_lib
from mmkd_jax import config as config_lib  # pylint: disable=wrong-import-position
from mmkd_jax.methods import METHODS  # pylint: disable=wrong-import-position
from mmkd_jax.main import resolve_config_path  # pylint: disable=wrong-import-position
from mmkd_jax.runs.stop import Preempted  # pylint: disable=wrong-import-position
from mmkd_jax.teachers import stages as teacher_stages  # pylint: disable=wrong-import-position

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
    # one cache per feature layer and storage (a variant with cache_dtype=float32 has its own)
    key = (c.feature_layer, c.cache_dtype, c.cache_logits_dtype, c.num_replays, c.augmentation_seed)
    if c.teacher_source == "precomputed" and METHODS.get(c.method).needs_teachers and key not in done:
      teacher_stages.precompute(c, loaded)
      done.add(key)
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
  summary = run_lib.train_and_evaluate(c, workdir, teachers, teacher_stages.open_cache(c, teachers))
  summary.pop("state", None)
  if summary["status"] != "finished":  # SIGTERM: the run saved a checkpoint; stop the table too
    raise SystemExit(f"{display(variant)} seed {seed} stopped ({summary['status']}) in {workdir}; "
                     "run the same command again to continue")
  return summary


def run_replicas(config, variant: Variant, seeds: list[int], workdir: str, loaded, overrides=()) -> None:
  """The seeds of one variant as replicas of one program (mmkd_jax/training/replicas.py); each writes
  ``<workdir>/seed<s>/``, the layout of single runs."""
  c = config_lib.validate(method_config(config, variant.method, (*variant.overrides, *overrides),
                                        replicas=",".join(map(str, seeds)), mode="distill"))
  teachers = loaded if METHODS.get(variant.method).needs_teachers else []
  print(f"== {display(variant)} seeds {seeds} as replicas -> {workdir}", flush=True)
  result = run_lib.train_members(c, workdir, teachers, teacher_stages.open_cache(c, teachers))
  unfinished = [s["seed"] for s in result["summaries"] if s["status"] == "preempted"]
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
          record = routing.measure_and_store(workdir, row.competence)
          if record is not None:
            summary["routing"] = record
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
  if not args.collect_only:
    compilation.enable()  # as mmkd_jax.main: a table's later seeds load its programs instead of compiling
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
