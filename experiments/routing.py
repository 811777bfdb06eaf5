"""Where a trained run's teacher weights go on the test split: the share of each sample's weight
mass on the teachers competent for its true label, per class and overall.

    python experiments/routing.py runs/reproduce/fashion_mnist_specialists/<row>/mmkd/seed0 \\
        [--competence "0,1,2,3|4,5,6|7,8,9"]

The weights are the method's own per-sample weights (``TeacherWeights``: on the teachers' logits,
the KD term, and, where the method has them, on their features) as its training objective computes them, on the unaugmented test images with the run's final (latest) student,
meta networks and teachers (online, eval mode), at the last epoch; the student's BatchNorm runs as
in a training step (batch statistics of a training-size batch; the last, padded batch's zero rows
enter its statistics), since that is the forward the weights are computed from in training. Competence is a (classes, teachers) 0/1 matrix, the
oracle's (``experiments/oracle.py``): given as "a,b|c|*" per teacher, or each teacher's own
trained ``classes``. Writes ``<workdir>/routing.json``::

    {"competent_share": overall mean over test samples of sum_competent w / sum w,
     "competent_share_per_class": [...], "class_teacher_weights": (classes x teachers) mean
     normalised weight, "competence": matrix, "samples": n, "step": checkpoint step,
     "feature": the same record of the feature weights (methods that weight features per sample)}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmkd_jax import config as config_lib
from mmkd_jax import registry
from mmkd_jax.training import setup as train
from mmkd_jax.data import pipeline
from mmkd_jax.data.augment import normalize
from mmkd_jax.runs.checkpoint import restore_raw_checkpoint
from mmkd_jax.teachers import stages as teacher_stages
from mmkd_jax.teachers.core import teacher_forward

ROUTING_FILE = "routing.json"
ORACLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "oracle.py")


def competent_share(weights: np.ndarray, competent: np.ndarray) -> np.ndarray:
  """Per sample: the share of the (non-negative) weight mass on competent teachers. (B, T) x (B, T)."""
  weights = np.clip(np.asarray(weights, np.float64), 0.0, None)
  total = weights.sum(1)
  return np.where(total > 0, (weights * competent).sum(1) / np.where(total > 0, total, 1.0), np.nan)


def summarise(weights: np.ndarray, labels: np.ndarray, competence: np.ndarray) -> dict:
  """The routing record of per-sample weights (N, T) on samples with ``labels`` (N,)."""
  num_classes = competence.shape[0]
  share = competent_share(weights, competence[labels])
  normalised = weights / np.maximum(weights.sum(1, keepdims=True), 1e-30)
  per_class = [float(np.nanmean(share[labels == k])) if np.any(labels == k) else None for k in range(num_classes)]
  class_teacher = [normalised[labels == k].mean(0).tolist() if np.any(labels == k) else None
                   for k in range(num_classes)]
  return {"competent_share": float(np.nanmean(share)), "competent_share_per_class": per_class,
          "class_teacher_weights": class_teacher, "competence": competence.tolist(), "samples": int(len(labels))}


def stored_config(workdir: str):
  with open(os.path.join(workdir, "config.json")) as f:
    return config_lib.from_json(json.load(f))


def run_competence(config, num_classes: int, text: str = "") -> np.ndarray:
  """The competence matrix: ``text`` ("a,b|c|*"), the run's oracle section, or the teachers' classes."""
  probe = config_lib.base_config()
  probe.teachers = config.teachers
  probe.oracle = {"competence": text or (config.oracle.competence if "oracle" in config else "")}
  (oracle,) = registry.import_plugins([ORACLE])  # the one module, however the oracle was imported
  return oracle.competence_matrix(probe, num_classes)


class TrainedRun(NamedTuple):
  config: ml_collections.ConfigDict
  setup: Any  # train.build's setup
  step: int
  outputs: Callable  # jitted (images, labels) -> readout(aux, teacher_logits)


def load_trained_run(workdir: str, readout: Callable) -> TrainedRun:
  """A finished run's latest checkpoint, its stored config with the teachers run online (on the
  test images; nothing else changes), and a jitted function of one raw test batch returning
  ``readout(aux, teacher_logits)`` of the method's training objective at the last epoch."""
  config = stored_config(workdir)
  config.teacher_source = "online"
  config = config_lib.validate(config)
  teachers = teacher_stages.load_teachers(config)
  setup = train.build(config, teachers)
  found = restore_raw_checkpoint(os.path.join(workdir, "checkpoints"))
  if found is None:
    raise FileNotFoundError(f"{workdir}: no checkpoint to measure (the committed records have none; "
                            "use the run under runs/reproduce/...)")
  state, _, step = found
  epoch = jnp.asarray(config.epochs - 1, jnp.int32)
  variables = tuple(t.variables for t in teachers)

  @jax.jit
  def outputs(images, labels):
    x = normalize(images, setup.spec.mean, setup.spec.std)
    logits, feats = teacher_forward(teachers, variables, x, config.feature_layer, config.dtype)
    logits = logits.astype(jnp.float32)
    batch = {"image": x, "label": labels, "teacher_logits": logits,
             "teacher_feat": tuple(f.astype(jnp.float32) for f in feats), "epoch": epoch}
    _, (_, aux) = setup.method.train_objective(state["params"], state["model_state"], state["meta_params"], batch)
    return readout(aux, logits)

  return TrainedRun(config, setup, int(step), outputs)


def _weight_kinds(aux, _) -> dict:
  """The per-sample weights a method reports, by kind (logits: the KD term; feature: its feature term)."""
  return {kind: w.astype(jnp.float32) for kind, w in aux["teacher_weights"].items()}


def measure(workdir: str, competence_text: str = "") -> dict:
  """Routing of the run in ``workdir`` (its latest checkpoint) on its evaluation split: the logit
  weights' record at the top level, the feature weights' (where the method has them) under "feature"."""
  run = load_trained_run(workdir, _weight_kinds)
  config, setup = run.config, run.setup
  competence = run_competence(config, setup.spec.num_classes, competence_text)

  weights: dict[str, list] = {}
  all_labels = []
  # Training-size batches: a method's weights may read the whole batch (MMKD's Gram rows are B
  # wide); the padded rows of the last batch are dropped from the record.
  for raw in pipeline.eval_batches(setup.dataset.test, setup.spec, config.batch_size):
    keep = np.asarray(raw["mask"], bool)
    for kind, w in run.outputs(jnp.asarray(raw["image"]), jnp.asarray(raw["label"])).items():
      weights.setdefault(kind, []).append(np.asarray(w)[keep])
    all_labels.append(np.asarray(raw["label"])[keep])
  labels = np.concatenate(all_labels)
  record = summarise(np.concatenate(weights["logits"]), labels, competence)
  if "feature" in weights:
    record["feature"] = summarise(np.concatenate(weights["feature"]), labels, competence)
  record.update(step=run.step, method=config.method, split=setup.spec.test_split,
                teachers=[t.name for t in config.teachers], kinds=sorted(weights))
  return record


def measure_and_store(workdir: str, competence_text: str = "") -> dict | None:
  """``routing.json`` of a finished run (measured once; again if it was measured against another
  competence than ``competence_text`` gives now, or before feature weights were measured, where the
  run's checkpoint is there); None for a run without teachers or weights."""
  path = os.path.join(workdir, ROUTING_FILE)
  has_checkpoint = os.path.isdir(os.path.join(workdir, "checkpoints"))
  if os.path.exists(path):
    with open(path) as f:
      record = json.load(f)
    expected = run_competence(stored_config(workdir), len(record["competence"]), competence_text)
    same = np.array_equal(np.asarray(record["competence"], np.float32), expected)
    if same and ("kinds" in record or not has_checkpoint):  # a record without "kinds" predates feature weights
      return record
    if not has_checkpoint:
      print(f"WARNING: {path} was measured against another competence and {workdir} has no checkpoint "
            "to measure it again", file=sys.stderr)
      return record
  if not has_checkpoint or not os.path.exists(os.path.join(workdir, "summary.json")):
    return None
  config = stored_config(workdir)
  if not config.teachers or config.method == "none":
    return None
  record = measure(workdir, competence_text)
  with open(path + ".tmp", "w") as f:
    json.dump(record, f, indent=1)
  os.replace(path + ".tmp", path)
  return record


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--competence", default="", help='per teacher "a,b|c|*" (default: the teachers\' classes)')
  args = parser.parse_args(argv)
  for workdir in args.workdirs:
    record = measure_and_store(workdir, args.competence)
    if record is None:
      print(f"{workdir}: no teacher weights to measure")
      continue
    per_class = " ".join(f"{v:.2f}" if v is not None else "-" for v in record["competent_share_per_class"])
    print(f"{workdir}: competent share {record['competent_share']:.3f} (per class: {per_class})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
