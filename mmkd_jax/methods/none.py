"""No distillation: the student (or a teacher being trained) on labels alone. Raw term ``ce``."""

from __future__ import annotations

import dataclasses

import ml_collections

from mmkd_jax.distill import losses
from mmkd_jax.methods.base import RunInfo, WeightedTermsMethod, apply_student, loss_weights, register


@dataclasses.dataclass(frozen=True)
class NoDistillation(WeightedTermsMethod):
  """Method 'none': no distillation, the student on its cross-entropy alone."""

  def init(self, rng, batch):
    v = self.student.init(rng, batch["image"], train=False)
    return {"student": v["params"]}, {"student": v.get("batch_stats", {})}, {}

  def compute_terms(self, params, state, meta_params, batch):
    del meta_params
    _, logits, stats = apply_student(self.student, params, state, batch["image"])
    return {"ce": losses.cross_entropy(logits, batch["label"])}, {"student": stats}, {"logits": logits}


@register("none", terms={"ce": 1.0}, needs_teachers=False)
def build(config: ml_collections.ConfigDict, run: RunInfo) -> NoDistillation:
  """The student alone (cross-entropy on labels)."""
  return NoDistillation(run, loss_weights(config))
