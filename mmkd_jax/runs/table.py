"""A table of runs from their work directories: ``mmkd-jax runs DIR [DIR ...]`` (or ``python -m
mmkd_jax.runs``). Every directory below DIR holding a run's ``config.json`` counts (replica
directories ``seed<s>/`` included; finished or not); runs that differ only in their seed form
one row with mean ± std (sample std) over the seeds, or one row each with ``--per_run``.
Markdown (default) or CSV."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
import sys
from typing import Any, Sequence

import numpy as np

from mmkd_jax import config as config_lib
from mmkd_jax.config.fields import flatten
from mmkd_jax.runs import identity as run_identity
from mmkd_jax.runs import storage
from mmkd_jax.methods import METHODS

_NOT_RUNS = {"checkpoints", "best", "tensorboard", "export", "corrupt"}   # parts of a run, not runs
_EVAL_KEYS = ("test/top1", "val/top1", "test_top1")   # older runs logged test_top1
# Fields that say nothing about what a run computes (besides RESUMABLE): never split a group.
_IGNORED = ("seed", "replicas")


@dataclasses.dataclass
class RunRecord:
  path: str
  config: dict[str, Any]
  status: str                   # finished | preempted | unfinished
  epochs_completed: int
  last_top1: float | None
  best_top1: float | None
  wall_seconds: float | None
  code_version: str

  @property
  def teachers(self) -> str:
    return " / ".join(t.get("arch", "?") for t in self.config.get("teachers", [])) or "—"


def find_runs(paths: Sequence[str]) -> list[str]:
  """Every run directory (one holding ``config.json``) at or below ``paths``, sorted."""
  found = set()
  for path in paths:
    if not storage.is_dir(path):
      raise FileNotFoundError(f"{path} is not a directory")
    for directory, subdirs, files in storage.walk(path):
      subdirs[:] = [d for d in subdirs if d not in _NOT_RUNS]
      if "config.json" in files:
        found.add(directory if storage.is_url(directory) else os.path.normpath(directory))
  return sorted(found)


def eval_top1(record: dict) -> float | None:
  """An epoch record's evaluation top-1 (``test/top1`` or ``val/top1``; older runs: ``test_top1``)."""
  return next((record[k] for k in _EVAL_KEYS if k in record), None)


def read_run(path: str) -> RunRecord:
  """A run's record: its summary when finished, else what its metrics.jsonl logged so far."""
  # fields renamed since, under their names now
  config = config_lib.upgrade_stored(storage.read_json(storage.join(path, "config.json")))
  summary: dict[str, Any] = {}
  if storage.exists(storage.join(path, "summary.json")):
    summary = storage.read_json(storage.join(path, "summary.json"))
  by_epoch: dict[int, dict] = {}
  times = []
  if storage.exists(storage.join(path, "metrics.jsonl")):
    for line in storage.read_text(storage.join(path, "metrics.jsonl")).splitlines():
      if line.strip():
        record = json.loads(line)
        times.append(record.get("time"))
        if "epoch" in record:  # a resumed run logs an epoch again: the last record wins
          by_epoch[record["epoch"]] = record
  evaluated = [v for v in (eval_top1(by_epoch[e]) for e in sorted(by_epoch)) if v is not None]
  times = [t for t in times if t is not None]
  return RunRecord(
      path=path, config=config, status=summary.get("status", "unfinished"),
      epochs_completed=summary.get("epochs_completed", len(by_epoch)),
      last_top1=summary.get("final_top1", evaluated[-1] if evaluated else None),
      best_top1=summary.get("best_top1", max(evaluated) if evaluated else None),
      wall_seconds=summary.get("wall_seconds", (max(times) - min(times)) if len(times) > 1 else None),
      code_version=summary.get("code_version", "—"))


def _identity(config: dict[str, Any]) -> dict[str, Any]:
  """The fields that make two runs different experiments (not seeds of one)."""
  free = tuple(f for f in run_identity.RESUMABLE if f != "epochs") + run_identity.BOOKKEEPING + _IGNORED
  return {k: v for k, v in flatten(config).items() if not k.startswith(free)}


def mean_std(values: Sequence[float | None], digits: int = 2) -> str:
  """``mean ± std`` (sample std) of the values given; one value alone; — for none."""
  values = np.asarray([v for v in values if v is not None], float)
  if len(values) == 0:
    return "—"
  if len(values) == 1:  # one seed has no spread to report
    return f"{values[0]:.{digits}f}"
  return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def _status(records: Sequence[RunRecord]) -> str:
  counts: dict[str, int] = {}
  for r in records:
    counts[r.status] = counts.get(r.status, 0) + 1
  return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


def is_teacher_run(path: str) -> bool:
  """A teacher's training run (``<teacher_dir>/<dataset>_<name>.run``, method ``none``)."""
  return os.path.normpath(path).endswith(".run")


# The standard columns of a row; the `setting` column names every other field that differs.
_HEADLINE = ("method", "student", "dataset", "epochs", "teachers.")
# Fields a method owns: where methods differ these differ by construction, so they are named only
# where runs of one method differ in them.
_METHOD_OWNED = ("weights.", "meta.lookahead_weights.", "temperature", "feature_layer", "feat_from_epoch")


def _varying(identities: Sequence[dict[str, Any]]) -> list[str]:
  """The fields outside the standard columns whose values differ among the groups (a method's own
  fields only among groups of the same method)."""
  def differs(key: str, among: Sequence[dict[str, Any]]) -> bool:
    return len({json.dumps(i.get(key), default=str) for i in among}) > 1
  sections = tuple(f"{i.get('method')}." for i in identities)
  by_method: dict[str, list[dict]] = {}
  for identity in identities:
    by_method.setdefault(str(identity.get("method")), []).append(identity)
  out = []
  for key in sorted(set().union(*identities)):
    if key.startswith(_HEADLINE):
      continue
    own = key.startswith(_METHOD_OWNED + sections)
    if (any(differs(key, same) for same in by_method.values()) if own else differs(key, identities)):
      out.append(key)
  return out


def table_rows(records: Sequence[RunRecord], per_run: bool = False) -> list[dict[str, str]]:
  """The rows: one per group of seeds (or per run), with every field that sets the groups apart
  (the `setting` column) and teacher runs labelled as such."""
  groups: dict[str, list[RunRecord]] = {}
  for r in records:
    key = r.path if per_run else json.dumps(_identity(r.config), sort_keys=True, default=str) + str(is_teacher_run(r.path))
    groups.setdefault(key, []).append(r)
  identities = [_identity(g[0].config) for g in groups.values()]
  varying = _varying(identities)
  rows = []
  for group, identity in zip(groups.values(), identities):
    first = group[0]
    method = first.config.get("method", "?")
    row = {"method": f"teacher ({first.config.get('student', '?')})" if is_teacher_run(first.path) else method,
           "student": first.config.get("student", "?"),
           "teachers": first.teachers, "dataset": str(first.config.get("dataset", "?")),
           "epochs": str(first.config.get("epochs", "?"))}
    if per_run:
      row.update(run=first.path, seed=str(first.config.get("seed", "?")))
    else:
      row["seeds"] = ",".join(str(r.config.get("seed", "?")) for r in sorted(group, key=lambda r: r.config.get("seed", 0)))
    walls = [r.wall_seconds / 60 for r in group if r.wall_seconds is not None]
    row.update(status=_status(group), last_top1=mean_std([r.last_top1 for r in group]),
               best_top1=mean_std([r.best_top1 for r in group]),
               wall_min=f"{np.mean(walls):.1f}" if walls else "—",
               code=", ".join(sorted({r.code_version for r in group})))
    row["setting"] = ", ".join(f"{k}={identity[k]}" for k in varying if identity.get(k) is not None
                               and (not _is_section(k) or k.startswith(f"{identity.get('method')}.")))
    rows.append(row)
  if not any(row["setting"] for row in rows):
    for row in rows:
      del row["setting"]
  return rows


def _is_section(key: str) -> bool:
  """A field of some method's own section (``<method>.<field>``)."""
  return "." in key and key.split(".", 1)[0] in METHODS


def render(rows: Sequence[dict[str, str]], fmt: str = "markdown") -> str:
  if not rows:
    return ""
  columns = list(rows[0])
  if fmt == "csv":
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(row.get(c, "") for c in columns) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="mmkd-jax runs", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("dirs", nargs="+", help="work directories, or directories holding them")
  parser.add_argument("--format", choices=("markdown", "csv"), default="markdown")
  parser.add_argument("--per_run", action="store_true", help="one row per run instead of per group of seeds")
  parser.add_argument("--teachers", action="store_true", help="list the teachers' training runs too")
  args = parser.parse_args(argv)
  try:
    paths = find_runs(args.dirs)
  except FileNotFoundError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  teachers = [p for p in paths if is_teacher_run(p)]
  if not args.teachers:
    paths = [p for p in paths if not is_teacher_run(p)]
  if not paths:
    print(f"error: no run (a directory with config.json) below {', '.join(args.dirs)}"
          + (f" but {len(teachers)} teacher runs (--teachers lists them)" if teachers else ""), file=sys.stderr)
    return 2
  sys.stdout.write(render(table_rows([read_run(p) for p in paths], args.per_run), args.format))
  if teachers and not args.teachers:
    print(f"({len(teachers)} teacher training runs not shown: --teachers lists them)", file=sys.stderr)
  return 0
