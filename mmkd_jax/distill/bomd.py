"""BOMD-like bi-level orthogonal multi-teacher distillation (after Gong & Wen, Electronics 2024).

The paper's equations were not retrievable; this follows its abstract (see docs/methods.md):
  * each teacher's feat[-2] is mapped *into the student's feature space* by a (semi-)orthogonal
    projection ``P_t`` (C_s x C_t, orthonormal rows or columns), parametrised by the Cayley
    transform of a skew-symmetric matrix, so it stays orthogonal under any update;
  * a feature alignment loss ``MSE(F_s, F_t P_t^T)`` (larger map pooled down to the smaller);
  * global teacher weights ``w = softmax(v)`` are the upper-level variables, learned by the exact
    hypergradient of the student's cross-entropy after a look-ahead (``mmkd_jax.bilevel``); the
    student and the projections are the lower level.
Objectives: train = CE + sum_t w_t KL_t + beta sum_t w_t align_t; look-ahead = the same without CE
(alpha on the KD part); outer = CE.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from mmkd_jax.distill import losses
from mmkd_jax.distill.base import BilevelObjectives, TeacherWeightingFields, apply_student, kd_matrix

Array = jax.Array
PyTree = Any


def cayley(generator: Array) -> Array:
  """Orthogonal ``(I + S)^-1 (I - S)`` with ``S = A - A^T`` skew-symmetric."""
  skew = generator - generator.T
  eye = jnp.eye(generator.shape[0], dtype=generator.dtype)
  return jnp.linalg.solve(eye + skew, eye - skew)


def projection(generator: Array, student_channels: int, teacher_channels: int) -> Array:
  """(C_s, C_t) block of an orthogonal matrix: orthonormal rows if C_s <= C_t, else columns."""
  return cayley(generator)[:student_channels, :teacher_channels]


@dataclasses.dataclass(frozen=True)
class BOMD(TeacherWeightingFields, BilevelObjectives):
  """Fields: student, num_teachers, teacher_channels, feature_index, temperature, alpha, beta."""

  bilevel = True

  def init(self, rng: Array, batch: dict[str, Any]):
    variables = self.student.init(rng, batch["image"], train=False)
    feats, _ = self.student.apply(variables, batch["image"], train=False)
    cs = feats[self.feature_index].shape[-1]
    generators = {f"proj{t}": jnp.zeros((max(cs, c), max(cs, c))) for t, c in enumerate(self.teacher_channels)}
    params = {"student": variables["params"], "proj": generators}
    meta = {"teacher_logits": jnp.zeros((self.num_teachers,))}
    return params, {"student": variables.get("batch_stats", {})}, meta

  def terms(self, params, state, meta_params, batch):
    feats, logits, stats = apply_student(self.student, params, state, batch["image"])
    student_feat = feats[self.feature_index]
    cs = student_feat.shape[-1]
    weights = jax.nn.softmax(meta_params["teacher_logits"]).astype(logits.dtype)
    kd = kd_matrix(logits, batch["teacher_logits"], self.temperature)  # (B, T)
    align = []
    for t, (c, teacher_feat) in enumerate(zip(self.teacher_channels, batch["teacher_feat"])):
      p = projection(params["proj"][f"proj{t}"], cs, c).astype(logits.dtype)
      source, target = losses.pool_to_common_size(student_feat, teacher_feat.astype(logits.dtype))
      align.append(losses.per_sample_mse(source, target @ p.T))
    align = jnp.stack(align, axis=-1)
    per_sample_weights = jnp.broadcast_to(weights, kd.shape)
    out = {"logits": logits, "loss_cls": losses.cross_entropy(logits, batch["label"]),
           "loss_div": jnp.sum(weights * jnp.mean(kd, axis=0)),
           "loss_feat": jnp.sum(weights * jnp.mean(align, axis=0)),
           "logits_weights": per_sample_weights, "feature_weights": per_sample_weights}
    return out, dict(state, student=stats)
