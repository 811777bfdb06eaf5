"""The oracles of per-sample teacher weighting, as plug-in methods (``config.imports``):

* ``oracle``: each sample's KD weights uniform over the teachers competent for its true label's
  class (a per-class competence, chosen on validation or from the teachers' trained classes);
* ``oracle_sample``: each sample's KD weight one-hot on the teacher with the highest probability
  on its true label (the teachers' own softmax at T = 1; ties share), which is a ceiling for
  routing by construction: no per-class rule can pick a better teacher for an image than the one
  most right about it. It is label-aware by design, as the per-class one.

Both read the label, which no weighting method may, so they live here, outside the package, and
registers through the public extension path (``@mmkd_jax.methods.register``):

    python -m mmkd_jax.main --config configs/fashion_mnist.py:aver,pool=specialists \\
        --config.imports='("experiments/oracle.py",)' --config.method=oracle --workdir runs/oracle

Competence: ``config.oracle.competence`` lists, per teacher, the classes it is competent for
("0,1,2,3|4,5,6|7,8,9"; "*" = every class); empty = each teacher's own ``classes`` (a specialist
is competent for what it was trained on; a teacher trained on every class for all of them).
Raw terms as AVER's: ``ce`` and ``kd`` (per-sample KL x T^2 weighted, batch mean), so the only
difference to AVER is where the weight goes. ``--config.method=oracle_sample`` needs no section.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmkd_jax.distill import losses
from mmkd_jax.methods import TeacherWeights, WeightedTermsMethod, loss_weights, register
from mmkd_jax.methods.base import RunInfo, apply_student, kd_matrix


def competence_matrix(config: ml_collections.ConfigDict, num_classes: int) -> np.ndarray:
  """(classes, teachers): 1 where the teacher is competent for the class."""
  text = str(config.oracle.competence or "").strip()
  per_teacher = text.split("|") if text else [",".join(map(str, t.classes)) or "*" for t in config.teachers]
  if len(per_teacher) != len(config.teachers):
    raise ValueError(f"config.oracle.competence {text!r} names {len(per_teacher)} teachers; the config has "
                     f"{len(config.teachers)}")
  matrix = np.zeros((num_classes, len(per_teacher)), np.float32)
  for t, classes in enumerate(per_teacher):
    rows = range(num_classes) if classes.strip() == "*" else [int(k) for k in classes.split(",") if k.strip()]
    matrix[list(rows), t] = 1.0
  if not np.all(matrix.sum(1) > 0):
    raise ValueError(f"config.oracle.competence: classes {np.flatnonzero(matrix.sum(1) == 0).tolist()} have no "
                     "competent teacher")
  return matrix


def most_right_teacher(teacher_logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """(B, T) weights one-hot on the teacher whose softmax gives the true label the highest
  probability (uniform over exact ties). ``teacher_logits``: (B, T, classes)."""
  log_p = jax.nn.log_softmax(teacher_logits.astype(jnp.float32), axis=-1)
  on_label = jnp.take_along_axis(log_p, labels[:, None, None], axis=-1)[..., 0]  # (B, T)
  best = (on_label == on_label.max(axis=1, keepdims=True)).astype(jnp.float32)
  return best / best.sum(axis=1, keepdims=True)


@dataclasses.dataclass(frozen=True)
class Oracle(WeightedTermsMethod):
  competence: tuple = ()  # (classes, teachers) rows, normalised: the weights of each class; () = per sample

  def compute_terms(self, params, state, meta_params, batch):
    del meta_params
    _, logits, stats = apply_student(self.student, params, state, batch["image"])
    per_sample_kd = kd_matrix(logits, batch["teacher_logits"], self.temperature)  # (B, T)
    if self.competence:
      weights = jnp.asarray(self.competence, logits.dtype)[batch["label"]]
    else:
      weights = most_right_teacher(batch["teacher_logits"], batch["label"]).astype(logits.dtype)
    terms = {"ce": losses.cross_entropy(logits, batch["label"]),
             "kd": losses.weighted_batch_sum(per_sample_kd, weights)}
    return terms, dict(state, student=stats), {"logits": logits, "teacher_weights": TeacherWeights(logits=weights)}


@register("oracle", terms={"ce": 1.0, "kd": 1.0}, section={"competence": ""})
def build(config: ml_collections.ConfigDict, run: RunInfo) -> Oracle:
  """Oracle: per-sample KD weights one-hot on the teachers competent for the true label."""
  matrix = competence_matrix(config, run.num_classes)
  matrix = matrix / matrix.sum(1, keepdims=True)
  return Oracle(run, loss_weights(config), config.temperature, tuple(map(tuple, matrix.tolist())))


@register("oracle_sample", terms={"ce": 1.0, "kd": 1.0})
def build_per_sample(config: ml_collections.ConfigDict, run: RunInfo) -> Oracle:
  """Oracle: per-sample KD weight one-hot on the teacher most probable on the true label."""
  return Oracle(run, loss_weights(config), config.temperature)
