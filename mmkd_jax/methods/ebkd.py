"""EBKD (entropy-based weights, as the CA-MKD repository's ``loops.py`` computes them).

Confident (low-entropy) teachers weigh more: ``w_bt = 1 - H_bt / sum_j H_bj`` from each
teacher's entropy at temperature 1 (rows sum to T - 1). Raw terms: ``ce`` and
``kd = sum_{b,t} w KL / (B T)``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from mmkd_jax.distill import losses
from mmkd_jax.methods.base import (RunInfo, TeacherWeights, WeightedTermsMethod, apply_student, kd_matrix,
                                   loss_weights, register)

Array = jax.Array


def entropy(logits: Array) -> Array:
  """Entropy (natural log) of softmax(logits) over the last axis, safe when probabilities underflow."""
  log_p = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


def ebkd_weights(teacher_logits: Array) -> Array:
  """``w = 1 - H_k / sum_j H_j`` from each teacher's entropy at temperature 1; rows sum to T - 1."""
  h = entropy(teacher_logits)  # (B, T)
  return 1.0 - h / jnp.sum(h, axis=-1, keepdims=True)


@dataclasses.dataclass(frozen=True)
class EBKD(WeightedTermsMethod):

  def compute_terms(self, params, state, meta_params, batch):
    del meta_params
    _, logits, stats = apply_student(self.student, params, state, batch["image"])
    kd = kd_matrix(logits, batch["teacher_logits"], self.temperature)
    w = jax.lax.stop_gradient(ebkd_weights(batch["teacher_logits"]))
    terms = {"ce": losses.cross_entropy(logits, batch["label"]), "kd": jnp.sum(w * kd) / kd.size}
    return terms, dict(state, student=stats), {"logits": logits, "teacher_weights": TeacherWeights(logits=w)}


@register("ebkd", terms={"ce": 1.0, "kd": 1.0})
def build(config: ml_collections.ConfigDict, run: RunInfo) -> EBKD:
  """EBKD: entropy-based teacher weights."""
  return EBKD(run, loss_weights(config), config.temperature)
