"""Plots of runs from their records: ``mmkd-jax plot RUN [RUN ...] [--out DIR]``.

Reads each run's ``metrics.jsonl`` (a work directory, or a directory holding runs such as a
replica run's ``seed<s>/``) and writes PNG files, every run on the same figure:

* ``accuracy.png``: evaluation top-1 per epoch (solid) and training accuracy (dashed);
* ``loss.png``: the training loss of each logged window by step, and the evaluation loss per epoch;
* ``lr.png``: the learning rate by step;
* ``teacher_weights.png``: the learned teacher weights per epoch (logits solid, features dashed),
  one panel per run, for methods that learn them.

Needs matplotlib (installed with the package's requirements; ``pip install -e '.[plots]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from mmkd_jax.runs import table as runs_table
from mmkd_jax.runs import storage


def records(run: str) -> tuple[list[dict], list[dict]]:
  """(epoch records, window records) of a run; a resumed run's repeated records: the last wins."""
  epochs: dict[int, dict] = {}
  windows: dict[int, dict] = {}
  for line in storage.read_text(storage.join(run, "metrics.jsonl")).splitlines():
    if not line.strip():
      continue
    record = json.loads(line)
    if "epoch" in record:
      epochs[record["epoch"]] = record
    elif "train/loss" in record:
      windows[record["step"]] = record
  return [epochs[e] for e in sorted(epochs)], [windows[s] for s in sorted(windows)]


def labels(paths: Sequence[str]) -> list[str]:
  """Short names that still tell the runs apart: the fewest trailing path parts that differ."""
  parts = [os.path.normpath(p).split(os.sep) for p in paths]
  for depth in range(1, max(len(p) for p in parts) + 1):
    names = ["/".join(p[-depth:]) for p in parts]
    if len(set(names)) == len(names):
      return names
  return list(paths)


def plot(paths: Sequence[str], out: str) -> list[str]:
  """Writes the figures of the runs in ``paths`` into ``out``; returns the files written."""
  import matplotlib  # pylint: disable=import-outside-toplevel  (optional: the plots extra)
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  runs = [(label, *records(path)) for label, path in zip(labels(paths), paths)]
  storage.makedirs(out)
  written = []

  def save(fig, name):
    path = os.path.join(out, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

  fig, ax = plt.subplots(figsize=(7, 4.2))
  for k, (label, epochs, _) in enumerate(runs):
    colour = f"C{k % 10}"
    evaluated = [(r["epoch"], runs_table.eval_top1(r)) for r in epochs if runs_table.eval_top1(r) is not None]
    if evaluated:
      ax.plot(*zip(*evaluated), color=colour, marker="o", markersize=3, label=f"{label} (eval)")
    trained = [(r["epoch"], r["train/accuracy"]) for r in epochs if "train/accuracy" in r]
    if trained:
      ax.plot(*zip(*trained), color=colour, linestyle="--", alpha=0.6, label=f"{label} (train)")
  ax.set(xlabel="epoch", ylabel="top-1 (%)", title="accuracy")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  save(fig, "accuracy.png")

  fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
  for k, (label, epochs, windows) in enumerate(runs):
    colour = f"C{k % 10}"
    left.plot([w["step"] for w in windows], [w["train/loss"] for w in windows], color=colour, label=label)
    losses = [(r["epoch"], r[key]) for r in epochs for key in ("test/loss", "val/loss") if key in r]
    if losses:
      right.plot(*zip(*losses), color=colour, marker="o", markersize=3, label=label)
  left.set(xlabel="step", ylabel="training loss (window mean)", yscale="log", title="training loss")
  right.set(xlabel="epoch", ylabel="evaluation loss", title="evaluation loss")
  for ax in (left, right):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  save(fig, "loss.png")

  fig, ax = plt.subplots(figsize=(7, 3.5))
  for k, (label, _, windows) in enumerate(runs):
    points = [(w["step"], w["train/lr"]) for w in windows if "train/lr" in w]
    if points:
      ax.plot(*zip(*points), color=f"C{k % 10}", label=label)
  ax.set(xlabel="step", ylabel="learning rate", title="learning rate")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  save(fig, "lr.png")

  weighted = [(label, epochs) for label, epochs, _ in runs
              if any(k.startswith("teacher_weights/") and k != "teacher_weights/per_class" for r in epochs for k in r)]
  if weighted:
    fig, axes = plt.subplots(len(weighted), 1, figsize=(7, 2.8 * len(weighted)), squeeze=False)
    for ax, (label, epochs) in zip(axes[:, 0], weighted):
      for kind, style in (("logits", "-"), ("feature", "--")):
        teachers = sorted({k.split("/", 2)[2] for r in epochs for k in r if k.startswith(f"teacher_weights/{kind}/")})
        for t, teacher in enumerate(teachers):
          points = [(r["epoch"], r[f"teacher_weights/{kind}/{teacher}"]) for r in epochs
                    if f"teacher_weights/{kind}/{teacher}" in r]
          ax.plot(*zip(*points), color=f"C{t % 10}", linestyle=style, label=f"{teacher} ({kind})")
      ax.set(xlabel="epoch", ylabel="mean weight", ylim=(-0.02, 1.02), title=f"teacher weights: {label}")
      ax.grid(alpha=0.3)
      ax.legend(fontsize=7, ncol=2)
    save(fig, "teacher_weights.png")
  return written


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="mmkd-jax plot", description=__doc__.split("\n\n")[0])
  parser.add_argument("runs", nargs="+", help="work directories, or directories holding them")
  parser.add_argument("--out", default="", help="where the PNG files go (default: <first run>/plots)")
  args = parser.parse_args(argv)
  try:
    given = {os.path.normpath(p) for p in args.runs}
    paths = [p for p in runs_table.find_runs(args.runs) if storage.exists(storage.join(p, "metrics.jsonl"))
             and (not runs_table.is_teacher_run(p) or os.path.normpath(p) in given)]
  except FileNotFoundError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if not paths:
    print(f"error: no run with a metrics.jsonl below {', '.join(args.runs)}", file=sys.stderr)
    return 2
  try:
    written = plot(paths, args.out or os.path.join(paths[0], "plots"))
  except ImportError:
    print("error: plotting needs matplotlib: pip install -e '.[plots]'", file=sys.stderr)
    return 2
  print(f"{len(paths)} run{'s' if len(paths) > 1 else ''} plotted: " + ", ".join(written))
  return 0


if __name__ == "__main__":
  sys.exit(main())
