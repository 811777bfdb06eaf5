"""AVER (AVER-MKD): every teacher's KD term with the same weight 1/T.

Raw terms: ``ce`` and ``kd = (1/T) sum_t mean_b KL_t[b]`` (the reference's ``AVERAGE_LOSS``:
batch-mean KL x T^2 per teacher, averaged over teachers). Training: ce + weights.kd * kd.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import ml_collections

from mmkd_jax.distill import losses
from mmkd_jax.methods.base import RunInfo, TeacherWeights, WeightedTermsMethod, apply_student, kd_matrix, loss_weights, register


@dataclasses.dataclass(frozen=True)
class AVER(WeightedTermsMethod):

  def compute_terms(self, params, state, meta_params, batch):
    del meta_params
    _, logits, stats = apply_student(self.student, params, state, batch["image"])
    per_sample_kd = kd_matrix(logits, batch["teacher_logits"], self.temperature)  # (B, T)
    uniform = jnp.full(per_sample_kd.shape, 1.0 / per_sample_kd.shape[1], logits.dtype)
    terms = {"ce": losses.cross_entropy(logits, batch["label"]),
             "kd": losses.weighted_batch_sum(per_sample_kd, uniform)}
    return terms, dict(state, student=stats), {"logits": logits, "teacher_weights": TeacherWeights(logits=uniform)}


@register("aver", terms={"ce": 1.0, "kd": 1.0})
def build(config: ml_collections.ConfigDict, run: RunInfo) -> AVER:
  """AVER: equal-weight average of the per-teacher KD losses."""
  return AVER(run, loss_weights(config), config.temperature)
