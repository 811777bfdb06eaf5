"""Each teacher's top-1 overall, per class and on its own classes, on the validation split
(``train[90%:]``) and on the test split; and the competence that follows from validation.

    python experiments/teacher_competence.py --config configs/fashion_mnist.py:pool=mixed \\
        --out experiments/results/fashion_mnist_mixed/teachers.json

Teachers that are missing are trained first (the config's recipe, as ``reproduce.py`` does).
Competence (for the oracle and routing.py): a teacher trained on a subset of classes is competent
for exactly those; where teachers saw every class, class k's competent teachers are those whose
validation top-1 on k lies within ``--margin`` points of the best teacher's on k (chosen on
validation, never on test). Printed as the "a,b|c|*" string that ``config.oracle.competence`` and
``Row.competence`` take.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from mmkd_jax import config as config_lib
from mmkd_jax.data import pipeline, sources
from mmkd_jax.data.augment import normalize
from mmkd_jax.teachers import stages as teacher_stages
from mmkd_jax.teachers.core import teacher_forward


def per_class_accuracy(config, teachers, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(teachers, classes) correct counts and (classes,) sample counts on ``split``."""
  spec = sources.dataset_spec(config)
  source = sources.data_source(config.dataset, split, config.data_dir or None, config.dataset_source_dir)
  variables = tuple(t.variables for t in teachers)

  @jax.jit
  def predictions(images):
    logits, _ = teacher_forward(teachers, variables, normalize(images, spec.mean, spec.std), config.feature_layer)
    return jnp.argmax(logits, -1)  # (B, T)

  correct = np.zeros((len(teachers), spec.num_classes))
  counts = np.zeros(spec.num_classes)
  for raw in pipeline.eval_batches(source, spec, config.eval_batch_size):
    keep = np.asarray(raw["mask"], bool)
    labels = np.asarray(raw["label"])[keep]
    predicted = np.asarray(predictions(jnp.asarray(raw["image"])))[keep]
    np.add.at(counts, labels, 1)
    for t in range(len(teachers)):
      np.add.at(correct[t], labels, predicted[:, t] == labels)
  return correct, counts


def competence_from_validation(config, accuracy: np.ndarray, margin: float) -> str:
  """Per teacher the classes it is competent for, as "a,b|c|*"."""
  num_classes = accuracy.shape[1]
  trained_on = [set(t.classes) if t.classes else set(range(num_classes)) for t in config.teachers]
  competent = np.zeros_like(accuracy, bool)
  for k in range(num_classes):
    candidates = [t for t in range(len(trained_on)) if k in trained_on[t]]
    if all(len(s) == num_classes for s in trained_on):
      best = max(accuracy[t, k] for t in candidates)
      candidates = [t for t in candidates if accuracy[t, k] >= best - margin]
    competent[candidates, k] = True
  return "|".join("*" if row.all() else ",".join(str(k) for k in np.flatnonzero(row)) for row in competent)


def report(config, margin: float) -> dict:
  teacher_stages.train_missing_teachers(config)  # as reproduce.py: a pool's first step may be this one
  teachers = teacher_stages.load_teachers(config)
  splits = {"validation": "train[90%:]", "test": sources.dataset_spec(config).test_split}
  record = {"teachers": [t.name for t in config.teachers], "margin_points": margin, "splits": splits,
            "trained_on": [list(t.classes) or None for t in config.teachers]}  # None: every class
  for name, split in splits.items():
    correct, counts = per_class_accuracy(config, teachers, split)
    per_class = 100.0 * correct / np.maximum(counts, 1)
    own = []
    for t, entry in enumerate(config.teachers):
      classes = list(entry.classes) or list(range(len(counts)))
      own.append(100.0 * correct[t, classes].sum() / counts[classes].sum())
    record[name] = {"overall": (100.0 * correct.sum(1) / counts.sum()).tolist(), "own_classes": own,
                    "per_class": per_class.tolist(), "samples": int(counts.sum())}
  record["competence"] = competence_from_validation(config, np.array(record["validation"]["per_class"]), margin)
  return record


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True, help="config file[:argument]")
  parser.add_argument("--margin", type=float, default=2.0, help="points below the best teacher still competent")
  parser.add_argument("--out", help="write the record here (JSON)")
  args = parser.parse_args(argv)
  path, _, arg = args.config.partition(":")
  config = config_lib.validate(config_lib.load(path, arg or None))
  record = report(config, args.margin)
  for split in ("validation", "test"):
    r = record[split]
    print(f"{split} ({record['splits'][split]}, {r['samples']} images):")
    for t, name in enumerate(record["teachers"]):
      print(f"  {name:12s} overall {r['overall'][t]:6.2f}%  own classes {r['own_classes'][t]:6.2f}%  per class "
            + " ".join(f"{v:5.1f}" for v in r["per_class"][t]))
  print(f"competence (from validation, margin {args.margin:g} points): {record['competence']}")
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(record, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
