"""BOMD-like bi-level orthogonal multi-teacher distillation (after Gong & Wen, Electronics 2024).

The paper's equations were not retrievable; this follows its abstract (see docs/methods.md):
  * each teacher's feat[-2] is mapped *into the student's feature space* by a (semi-)orthogonal
    projection ``P_t`` (C_s x C_t, orthonormal rows or columns), parametrised by the Cayley
    transform of a skew-symmetric matrix, so it stays orthogonal under any update;
  * a feature alignment loss ``MSE(F_s, F_t P_t^T)`` (larger map pooled down to the smaller);
  * global teacher weights ``w = softmax(v)`` are the upper-level variables, learned by the exact
    hypergradient of the student's cross-entropy after a look-ahead (``mmkd_jax.distill.hypergradient``); the
    student and the projections are the lower level.
Raw terms: ``ce``, ``kd = sum_t w_t mean_b KL_t``, ``feat = sum_t w_t mean_b align_t``; training
ce + kd + weights.feat * feat (10, our choice); look-ahead the same without CE; outer CE.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

import ml_collections

from mmkd_jax.distill import losses
from mmkd_jax.methods.base import RunInfo, TeacherWeights, apply_student, init_student, kd_matrix, register
from mmkd_jax.methods.bilevel import BilevelMethod

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
class BOMD(BilevelMethod):

  def init(self, rng: Array, batch: dict[str, Any]):
    params, state, feats, _ = init_student(self.student, rng, batch["image"])
    cs = feats[self.run.feature_layer].shape[-1]
    params["proj"] = {f"proj{t}": jnp.zeros((max(cs, c), max(cs, c)))
                      for t, c in enumerate(self.run.teacher_channels)}
    return params, state, {"teacher_logits": jnp.zeros((self.run.num_teachers,))}

  def compute_terms(self, params, state, meta_params, batch):
    feats, logits, stats = apply_student(self.student, params, state, batch["image"])
    student_feat = feats[self.run.feature_layer]
    cs = student_feat.shape[-1]
    weights = jax.nn.softmax(meta_params["teacher_logits"]).astype(logits.dtype)
    kd = kd_matrix(logits, batch["teacher_logits"], self.temperature)  # (B, T)
    align = []
    for t, (c, teacher_feat) in enumerate(zip(self.run.teacher_channels, batch["teacher_feat"])):
      p = projection(params["proj"][f"proj{t}"], cs, c).astype(logits.dtype)
      source, target = losses.pool_to_common_size(student_feat, teacher_feat.astype(logits.dtype))
      align.append(losses.per_sample_mse(source, target @ p.T))
    align = jnp.stack(align, axis=-1)
    per_sample_weights = jnp.broadcast_to(weights, kd.shape)
    terms = {"ce": losses.cross_entropy(logits, batch["label"]),
             "kd": jnp.sum(weights * jnp.mean(kd, axis=0)),
             "feat": jnp.sum(weights * jnp.mean(align, axis=0))}
    return terms, dict(state, student=stats), {"logits": logits, "teacher_weights": TeacherWeights(
                                                   logits=per_sample_weights, feature=per_sample_weights)}


@register("bomd", terms={"ce": 1.0, "kd": 1.0, "feat": 10.0}, bilevel=True)
def build(config: ml_collections.ConfigDict, run: RunInfo) -> BOMD:
  """BOMD-like: orthogonal teacher-to-student projections, bi-level global teacher weights."""
  return BOMD.from_config(config, run)
