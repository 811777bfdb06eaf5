"""What a bi-level run's weight networks did, epoch by epoch, from its committed ``metrics.jsonl``.

    python experiments/meta_diagnostics.py experiments/results/fashion_mnist_specialists/<row>/mmkd*/seed*

For each run: per epoch the test top-1, the fraction of training samples whose logit / feature
weights are one-hot within 1e-3 (a saturated softmax, whose hypergradient vanishes), the
hypergradient norm reaching each weight network, and the mean weight per teacher. A weight network
that is one-hot with a zero hypergradient has stopped learning: its teacher choice is frozen.
Reads only the records the training loop writes at each epoch's end; trains nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from render import epoch_records  # pylint: disable=wrong-import-position  (one record per epoch, resumes too)
from mmkd_jax.runs.table import eval_top1  # pylint: disable=wrong-import-position

_NETS = ("logits", "feature")


def teacher_names(record: dict, net: str) -> list[str]:
  prefix = f"teacher_weights/{net}/"
  return sorted(k[len(prefix):] for k in record if k.startswith(prefix))


def diagnose(run_dir: str) -> list[dict]:
  """One row per epoch: top-1, and per weight network its one-hot fraction, hypergradient norm and
  mean teacher weights (absent networks are left out)."""
  rows = []
  for r in epoch_records(run_dir):
    row = {"epoch": r["epoch"], "top1": eval_top1(r)}
    for net in _NETS:
      names = teacher_names(r, net)
      if not names:
        continue
      row[net] = {"onehot": r.get(f"train/diag/{net}_weights_onehot"),
                  "hypergrad_norm": r.get(f"train/hypergrad_norm/{net}_weight"),
                  "weights": {n: r[f"teacher_weights/{net}/{n}"] for n in names}}
    rows.append(row)
  return rows


def _fmt(x, spec: str) -> str:
  return "–" if x is None else format(x, spec)


def markdown(run_dir: str, rows: list[dict]) -> str:
  nets = [n for n in _NETS if rows and n in rows[0]]
  head = ["epoch", "top-1"] + [f"{n} {c}" for n in nets for c in
                               ("one-hot", "hypergrad", "mean weights (" + " / ".join(rows[0][n]["weights"]) + ")")]
  lines = [f"{run_dir}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for row in rows:
    cells = [str(row["epoch"]), _fmt(row["top1"], ".2f")]
    for n in nets:
      d = row.get(n, {})
      cells += [_fmt(d.get("onehot"), ".3f"), _fmt(d.get("hypergrad_norm"), ".2e"),
                " / ".join(f"{w:.2f}" for w in d.get("weights", {}).values())]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("run_dirs", nargs="+")
  parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown tables")
  args = parser.parse_args(argv)
  missing = [d for d in args.run_dirs if not os.path.isfile(os.path.join(d, "metrics.jsonl"))]
  if missing:
    print(f"meta_diagnostics: no metrics.jsonl in {missing[0]}; give run directories", file=sys.stderr)
    return 2
  results = {d: diagnose(d) for d in args.run_dirs}
  if args.json:
    print(json.dumps(results, indent=1))
  else:
    print("\n\n".join(markdown(d, rows) for d, rows in results.items()))
  return 0


if __name__ == "__main__":
  sys.exit(main())
