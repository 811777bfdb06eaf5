"""Single-teacher KD (Hinton et al. 2015) from ``config.kd.teacher_index``.

Raw terms: ``ce`` and ``kd = mean_b T^2 KL(p_t || p_s)[b]`` of that teacher. RepDistiller's
usual recipe is ``weights.ce=0.1, weights.kd=0.9``; the default is 1 / 1.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from mmkd_jax.distill import losses
from mmkd_jax.methods.base import (RunInfo, TeacherWeights, WeightedTermsMethod, apply_student, loss_weights,
                                   register)
from mmkd_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class SingleTeacherKD(WeightedTermsMethod):
  teacher_index: int = 0

  def compute_terms(self, params, state, meta_params, batch):
    del meta_params
    _, logits, stats = apply_student(self.student, params, state, batch["image"])
    teacher = batch["teacher_logits"][:, self.teacher_index].astype(logits.dtype)
    weights = jax.nn.one_hot(jnp.full(logits.shape[:1], self.teacher_index), self.run.num_teachers)
    terms = {"ce": losses.cross_entropy(logits, batch["label"]),
             "kd": losses.kd_batchmean(logits, teacher, self.temperature)}
    return terms, dict(state, student=stats), {"logits": logits, "teacher_weights": TeacherWeights(logits=weights)}


def _validate(config: ml_collections.ConfigDict) -> None:
  if not 0 <= config.kd.teacher_index < max(len(config.teachers), 1):
    raise ConfigError(f"config.kd.teacher_index: {config.kd.teacher_index} is not one of the "
                      f"{len(config.teachers)} configured teachers (0-based)")


@register("kd", terms={"ce": 1.0, "kd": 1.0}, section={"teacher_index": 0}, validate=_validate)
def build(config: ml_collections.ConfigDict, run: RunInfo) -> SingleTeacherKD:
  """Single-teacher KD (Hinton) from one configured teacher."""
  return SingleTeacherKD(run, loss_weights(config), config.temperature,
                         teacher_index=config.kd.teacher_index)
