"""How the teachers do on the views the student trains on: the views they were trained on, or new ones.

    python experiments/teacher_views.py [--teacher_dir DIR] [--epochs 10] [--json out.json]

Our augmentation is a pure function of (augmentation seed, example, replay): a teacher trained
with ``augmentation_seed`` s saw view (i, e) of example i in its epoch e, and a student trained
with the same s sees the very same pixels in its epoch e. The original code's RandomCrop draws
fresh views in every run, so its student's views are (up to chance) views its teachers never saw.
This script measures each teacher's cross-entropy, accuracy and mean KD target confidence on the
training split under the student's views of epochs 0..epochs-1 with the teachers' own seed
(``seen``) and with another seed (``fresh``): a teacher that memorised its training views looks
better on ``seen``, and a meta-learned weighting that favours the teacher most correct on hard
training examples then favours the one that memorised most.

Defaults: the end-to-end Fashion-MNIST setting's teachers (experiments/pytorch_end_to_end.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
import pytorch_end_to_end as e2e  # pylint: disable=wrong-import-position

from mmkd_jax.data import sources  # pylint: disable=wrong-import-position
from mmkd_jax.runs import storage  # pylint: disable=wrong-import-position
from mmkd_jax.teachers.core import TEACHER_META, augmented_teacher_outputs, load_teacher  # pylint: disable=wrong-import-position

SETTING = e2e.SETTINGS["fashion_mnist"]
TEACHERS = tuple((name, arch) for name, arch, _ in SETTING["teachers"])
WORK = os.path.join(ROOT, "runs", "pytorch_end_to_end", "fashion_mnist")


def measure(teacher_dir: str, data_dir: str, epochs: int, fresh_seed: int, batch: int = 500) -> dict:
  """Each teacher on the views of its own training (``seen``: the augmentation seed its record
  names) and on views of ``fresh_seed``, over epochs 0..epochs-1 of the training split."""
  dataset = e2e.open_setting(SETTING, data_dir)
  spec = dataset.spec
  arrays = sources.read_records(dataset.train, np.arange(len(dataset.train)), spec)
  labels_all = np.asarray(arrays["label"])
  out, seen_seeds = {"seen": {}, "fresh": {}}, {}
  for name, arch in TEACHERS:
    path = e2e.teacher_path(SETTING, teacher_dir, name)
    if not os.path.isdir(path):
      continue
    teacher = load_teacher(name, arch, spec.num_classes, path, spec.image_shape)
    seen_seeds[name] = storage.read_json(os.path.join(path, TEACHER_META))["identity"]["augmentation_seed"]
    forward = jax.jit(lambda images, index, replay, seed, t=teacher: augmented_teacher_outputs(
        [t], [t.variables], images, index, replay, seed, spec)[0][:, 0], static_argnums=(3,))
    for view, seed in (("seen", seen_seeds[name]), ("fresh", fresh_seed)):
      ce = correct = confidence = 0.0
      for epoch in range(epochs):
        for start in range(0, len(labels_all), batch):
          index = np.arange(start, min(start + batch, len(labels_all)))
          logits = np.asarray(forward(jnp.asarray(arrays["image"][index]), jnp.asarray(index, jnp.int32),
                                      jnp.asarray(epoch, jnp.int32), seed), np.float64)   # (B, C)
          labels = labels_all[index]
          shifted = logits - logits.max(-1, keepdims=True)
          log_p = shifted - np.log(np.sum(np.exp(shifted), -1, keepdims=True))
          ce -= np.sum(log_p[np.arange(len(index)), labels])
          correct += np.sum(np.argmax(logits, -1) == labels)
          confidence += np.sum(np.exp(log_p[np.arange(len(index)), labels]))
      count = epochs * len(labels_all)
      out[view][name] = {"cross_entropy": round(float(ce / count), 4), "accuracy": round(float(100 * correct / count), 2),
                         "true_class_probability": round(float(confidence / count), 4)}
  return {"augmentation_seed_of_teachers": seen_seeds, "fresh_seed": fresh_seed, "epochs": epochs, "views": out}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--teacher_dir", default=os.path.join(WORK, "teachers"))
  parser.add_argument("--data_dir", default=os.path.join(WORK, "tfds"))
  parser.add_argument("--epochs", type=int, default=10)
  parser.add_argument("--fresh_seed", type=int, default=1001)
  parser.add_argument("--json", default="")
  args = parser.parse_args(argv)
  result = measure(args.teacher_dir, args.data_dir, args.epochs, args.fresh_seed)
  for view, per in result["views"].items():
    for name, m in per.items():
      print(f"{view:6s} {name:12s} CE {m['cross_entropy']:.4f}  top-1 {m['accuracy']:.2f}  "
            f"p(true) {m['true_class_probability']:.4f}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
