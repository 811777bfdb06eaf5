"""Why AEKD's weights go where they go: per teacher, on the test split, the quantities its
min-norm solver reads, for a finished AEKD run (its final student) and for a student that knows
nothing yet (uniform soft predictions, as at the start of training).

    python experiments/aekd_gradients.py experiments/results/fashion_mnist_mixed/<row>/aekd/seed0

AEKD's gradient of teacher k's batch-mean KD loss w.r.t. the student logits is
``T (mean_b p_s - mean_b p_k) / B``, so its min-norm weights pick the mixture of the teachers'
*batch-averaged* soft predictions closest to the student's: which teacher is right on which image
is averaged away. Prints, per teacher, the mean entropy of its soft predictions (temperature T),
the mean over batches of ``|mean_b p_s - mean_b p_k|`` and the weights AEKD's solver gives, and
the mean KL(p_k || p_s) of the trained student (any method's run: a loss that learns its weights by
descending the KD term prefers the teacher this is smallest for).
The run needs its checkpoint (runs/reproduce/..., not the committed records).
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import routing  # noqa: E402  (experiments/ is not a package)
from mmkd_jax.data import pipeline  # noqa: E402
from mmkd_jax.methods import METHODS  # noqa: E402
from mmkd_jax.methods.aekd import aekd_cap, min_norm_weights  # noqa: E402


def batch_statistics(student_probs: np.ndarray, teacher_probs: np.ndarray, cap: float) -> dict:
  """AEKD's inputs and answer for one batch: student (B, C) and teacher (T, B, C) soft predictions."""
  gaps = student_probs.mean(0)[None] - teacher_probs.mean(1)  # (T, C), AEKD's gradients up to T / B
  log_teacher = np.log(np.clip(teacher_probs, 1e-30, None))
  entropy = -(teacher_probs * log_teacher).sum(-1).mean(1)
  kl = (teacher_probs * (log_teacher - np.log(np.clip(student_probs, 1e-30, None))[None])).sum(-1).mean(1)
  return {"entropy": entropy, "kl": kl, "gap_norm": np.linalg.norm(gaps, axis=-1),
          "weights": min_norm_weights(gaps @ gaps.T, cap)}


def measure(workdir: str) -> dict:
  """Per-teacher AEKD statistics of the run in ``workdir`` on its full test batches."""
  run = routing.load_trained_run(workdir, lambda aux, teacher_logits: (aux["logits"].astype(jnp.float32), teacher_logits))
  config, setup, temperature = run.config, run.setup, run.config.temperature
  c = config.aekd.c if config.method == "aekd" else METHODS.get("aekd").section["c"]  # AEKD's default elsewhere
  cap = aekd_cap(len(config.teachers), c)

  trained, untrained = [], []
  for raw in pipeline.eval_batches(setup.dataset.test, setup.spec, config.batch_size):
    keep = np.asarray(raw["mask"], bool)
    if not keep.all():
      continue  # AEKD's batch means are over full training batches
    logits = run.outputs(jnp.asarray(raw["image"]), jnp.asarray(raw["label"]))
    student, teacher = (np.asarray(jax.nn.softmax(x / temperature, -1)) for x in logits)
    teacher = np.moveaxis(teacher, 1, 0)  # (B, T, C) -> (T, B, C)
    trained.append(batch_statistics(student, teacher, cap))
    untrained.append(batch_statistics(np.full_like(student, 1.0 / student.shape[-1]), teacher, cap))
  mean = lambda rows, key: np.mean([r[key] for r in rows], axis=0)
  return {"teachers": [t.name for t in config.teachers], "temperature": temperature, "batches": len(trained),
          "entropy": mean(trained, "entropy"), "kl": mean(trained, "kl"),
          **{f"{name}_{key}": mean(rows, key) for name, rows in (("trained", trained), ("uniform", untrained))
             for key in ("gap_norm", "weights")}}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("workdirs", nargs="+")
  args = parser.parse_args(argv)
  for workdir in args.workdirs:
    r = measure(workdir)
    print(f"{workdir} ({r['batches']} test batches, T = {r['temperature']})")
    print("teacher | entropy of p_k | KL(p_k || p_s), trained student | uniform student: |mean p_s - mean p_k|, weight | "
          "trained student: |mean p_s - mean p_k|, weight")
    for i, name in enumerate(r["teachers"]):
      print(f"{name} | {r['entropy'][i]:.3f} | {r['kl'][i]:.3f} | {r['uniform_gap_norm'][i]:.4f}, {r['uniform_weights'][i]:.3f} | "
            f"{r['trained_gap_norm'][i]:.4f}, {r['trained_weights'][i]:.3f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
