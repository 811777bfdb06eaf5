"""How reproduce.py's results look: a table in the papers' layout (ours next to the published
number), differences to baselines by Welch's t (experiments/significance.py), accuracy curves with their seed band,
the routing heatmap and the learned-weight heatmaps; read from run records only (``summary.json``,
``metrics.jsonl``, ``routing.json``), so they render the same from committed records.
"""

from __future__ import annotations

import json
import os

import numpy as np

import provenance
import significance
from tables import Published, Row, Table, Variant

from mmkd_jax.runs.table import eval_top1, mean_std

# How each method appears in tables (the papers' names).
DISPLAY = {"none": "Student (no KD)", "kd": "KD (1 teacher)", "aver": "AVER", "ebkd": "EBKD",
           "aekd": "AEKD", "camkd": "CA-MKD", "fitnet": "FitNet-MKD", "amtml": "AMTML-KD",
           "bomd": "BOMD-like", "mmkd": "MMKD"}


def display(variant: Variant) -> str:
  if variant.label:
    return variant.label
  name = DISPLAY.get(variant.method, variant.method)
  return f"{name} ({', '.join(variant.overrides)})" if variant.overrides else name


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
    header += ["logit weights on competent teachers (test)", "feature weights on competent teachers (test)"] \
        if routed else []
  lines = [f"### {table.title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  teacher_cells, footnotes = ["Teachers (ensemble / each)"], []
  for row in table.rows:
    acc = next((r["teacher_accuracy"] for runs in results[row.label].values() for r in runs
                if r.get("teacher_accuracy")), {})
    ensemble = acc.get("teacher/ensemble")
    each = [f"{k.split('/', 1)[1]} {v:.2f}" for k, v in acc.items() if k != "teacher/ensemble"]
    teacher_cells += [f"{ensemble:.2f} / " + ", ".join(each) if acc else "not run", "", ""] + (["", ""] if routed else [])
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
        shares = [r["routing"]["feature"]["competent_share"] for r in runs if "feature" in r.get("routing", {})]
        cells.append(mean_std(shares, 3) if shares else "—")
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", "Top-1 (%) on the evaluation split, mean ± sample std over seeds: last epoch, and in parentheses "
            "the best epoch (the originals report only the best epoch, i.e. model selection on the test set). "
            "min/run: wall minutes per run on the machine that ran it."]
  if routed:
    lines += ["Weights on competent teachers: the share of each test sample's weight mass on the teachers "
              "competent for its label (experiments/routing.py), for the weights on the teachers' logits (the KD "
              "term) and, apart, on their features (methods that weight features per sample; '—': none, or not "
              "measured), mean over the test split, mean ± std over seeds; uniform weights give (competent "
              "teachers / teachers)."]
  lines += [f"[{i}] {s}" for i, s in enumerate(footnotes, 1)]
  if table.note:
    lines += ["", table.note]
  for row in table.rows:
    all_runs = [r for runs in results[row.label].values() for r in runs]
    lines.append(f"- `{row.label}`: `{row.config}{':' + row.arg if row.arg else ''}`"
                 + (f" with {', '.join(row.overrides)}" if row.overrides else "")
                 + f"; runs made with: {_settings_line(all_runs)}")
    versions = provenance.versions_line(r.get("code_version", "unrecorded") for r in all_runs)
    if versions:  # a reused run from other code, or a queue that outlived a commit
      lines.append(f"- {versions}")
    lines += _teacher_warning(all_runs)
  for baseline in table.baselines:
    lines += ["", render_differences(table, results, baseline)]
  return "\n".join(lines) + "\n"


def render_differences(table: Table, results: dict, baseline: str) -> str:
  """Each variant against ``baseline`` by the rule of experiments/significance.py: the difference
  of mean last-epoch top-1, its 95 % interval and Welch's p; 'beyond' only where p < 0.05."""
  name = next((display(v) for v in table.variants if v.slug == baseline), baseline)
  lines = [f"Differences to {name} (last epoch):", "",
           "| variant | difference | 95 % interval (Welch) | p | beyond |", "|---|---|---|---|---|"]
  for row in table.rows:
    base = [r["final_top1"] for r in results[row.label].get(baseline, [])]
    for variant in table.variants:
      runs = [r["final_top1"] for r in results[row.label].get(variant.slug, [])]
      if variant.slug == baseline or len(runs) < 2 or len(base) < 2:
        continue
      d = significance.welch(runs, base)
      lines.append(f"| {display(variant)} | {d.diff:+.2f} | [{d.low:+.2f}, {d.high:+.2f}] | {d.p:.3f} | "
                   f"{'yes' if d.beyond else 'no'} |")
  return "\n".join(lines + ["", significance.RULE])


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
  summary_path = os.path.join(workdir, "summary.json")
  summary = {}
  if os.path.exists(summary_path):
    with open(summary_path) as f:
      summary = json.load(f)
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
