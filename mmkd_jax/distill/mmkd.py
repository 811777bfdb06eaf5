"""MMKD (Zhang, Chen, Wang, ICME 2023): meta-learned per-sample teacher weights.

Parameters are split as the reference's optimisers split them:
  * inner ``params = {'student', 'match'}``: the student and the per-teacher feature aligners,
    trained by SGD on the training objective and unrolled in the look-ahead;
  * ``meta_params = {'logits_weight', 'feature_weight'}``: the two meta-weight networks,
    trained only by the hypergradient of the outer cross-entropy (``mmkd_jax.bilevel``).
``model_state = {'student', 'match'}`` holds their BatchNorm running statistics.

Batches are batch-first: ``teacher_logits`` (B, T, C), ``teacher_feat`` a tuple of T maps
(B, H, W, C), ``image`` (B, H, W, 3) normalised, ``label`` (B,).

Objectives (B = batch, weights w[b, t] from the meta nets, KD at temperature T):
  train    = CE + mean_b sum_t w_l KL_t + beta * L_feat
  matching = alpha * mean_b sum_t w_l KL_t + beta * L_feat       (the look-ahead steps)
  outer    = CE                                                  (after the look-ahead)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from mmkd_jax.distill import losses
from mmkd_jax.distill.align import FeatureAligner
from mmkd_jax.distill.base import BilevelObjectives, TeacherWeightingFields, apply_student
from mmkd_jax.distill.meta_nets import WeightMLP, feature_weight_input, logits_weight_input

Array = jax.Array
PyTree = Any


@dataclasses.dataclass(frozen=True)
class MMKD(TeacherWeightingFields, BilevelObjectives):
  deep_aligner: bool = False
  hidden_divisor: int = 2
  bn_groups: int = 1
  # The reference detaches the student's outputs before the meta nets; False is only for
  # checking the total derivative by finite differences.
  detach_student: bool = True
  # 'meta': learned per-sample weights (MMKD); 'uniform': fixed 1/T (AVER, FitNet-MKD).
  weighting: str = "meta"
  warmup_epochs: int = 0
  gram_groups: int = 1  # >1: Gram matrices within each group (device) instead of the global batch

  @property
  def bilevel(self) -> bool:
    return self.weighting == "meta"

  @property
  def aligner(self) -> FeatureAligner:
    return FeatureAligner(tuple(self.teacher_channels), self.deep_aligner, self.bn_groups)

  @property
  def weight_net(self) -> WeightMLP:
    return WeightMLP(self.num_teachers, self.hidden_divisor)

  @property
  def uses_features(self) -> bool:
    return self.beta != 0

  # -- initialisation -------------------------------------------------------------------
  def init(self, rng: jax.Array, batch: dict[str, Any]) -> tuple[PyTree, PyTree, PyTree]:
    """Returns (params, model_state, meta_params) for a batch shaped like training batches."""
    k_student, k_match, k_lw, k_fw = jax.random.split(rng, 4)
    student_vars = self.student.init(k_student, batch["image"], train=False)
    feats, logits = self.student.apply(student_vars, batch["image"], train=False)
    params = {"student": student_vars["params"]}
    state = {"student": student_vars.get("batch_stats", {})}
    meta = {}
    if self.bilevel:
      meta["logits_weight"] = self.weight_net.init(
          k_lw, logits_weight_input(batch["teacher_logits"], logits))["params"]
    if self.uses_features:
      match_vars = self.aligner.init(k_match, feats[self.feature_index], batch["teacher_feat"])
      params["match"], state["match"] = match_vars["params"], match_vars["batch_stats"]
      if self.bilevel:
        meta["feature_weight"] = self.weight_net.init(
            k_fw, feature_weight_input(batch["teacher_feat"], feats[self.feature_index],
                                     groups=self.gram_groups))["params"]
    return params, state, meta

  # -- the loss terms -------------------------------------------------------------------
  def teacher_weights(self, meta_params: PyTree, batch: dict[str, Any], logits: Array,
                      student_feat: Array | None) -> tuple[Array, Array | None]:
    if not self.bilevel:
      uniform = jnp.full((logits.shape[0], self.num_teachers), 1.0 / self.num_teachers, logits.dtype)
      return uniform, (uniform if self.uses_features else None)
    w_logits = self.weight_net.apply({"params": meta_params["logits_weight"]},
                                     logits_weight_input(batch["teacher_logits"], logits, self.detach_student))
    w_feat = None
    if self.uses_features:
      w_feat = self.weight_net.apply({"params": meta_params["feature_weight"]},
                                     feature_weight_input(batch["teacher_feat"], student_feat,
                                                          self.detach_student, self.gram_groups))
    if "epoch" in batch and self.warmup_epochs > 0:  # equal weights until the meta nets train
      warm = batch["epoch"] < self.warmup_epochs
      uniform = 1.0 / self.num_teachers
      w_logits = jnp.where(warm, uniform, w_logits)
      if w_feat is not None:
        w_feat = jnp.where(warm, uniform, w_feat)
    return w_logits, w_feat

  def loss_terms(self, logits: Array, student_feat: Array | None, params: PyTree, state: PyTree,
                 meta_params: PyTree, batch: dict[str, Any]) -> tuple[dict[str, Array], PyTree]:
    """Named loss terms and weights given the student's outputs; returns the new aligner state."""
    w_logits, w_feat = self.teacher_weights(meta_params, batch, logits, student_feat)
    per_sample_kd = losses.kd_per_sample(
        logits[:, None, :], batch["teacher_logits"].astype(logits.dtype), self.temperature)  # (B, T)
    out = {
        "logits": logits,
        "loss_cls": losses.cross_entropy(logits, batch["label"]),
        "per_sample_kd": per_sample_kd,
        "logits_weights": w_logits,
        "loss_div": losses.weighted_batch_sum(per_sample_kd, w_logits),
        "loss_feat": jnp.zeros((), logits.dtype),
    }
    new_state = dict(state)
    if self.uses_features:
      per_sample_feat, match_updated = self.aligner.apply(
          {"params": params["match"], "batch_stats": state["match"]}, student_feat,
          batch["teacher_feat"], mutable=["batch_stats"])
      new_state["match"] = match_updated["batch_stats"]
      out.update(student_feat=student_feat, feature_weights=w_feat,
                 per_sample_feat=per_sample_feat,
                 loss_feat=losses.weighted_batch_sum(per_sample_feat, w_feat))
    return out, new_state

  def terms(self, params: PyTree, state: PyTree, meta_params: PyTree, batch: dict[str, Any]
            ) -> tuple[dict[str, Array], PyTree]:
    """All named loss terms and weights for one batch, and the updated running statistics."""
    feats, logits, student_stats = apply_student(self.student, params, state, batch["image"])
    student_feat = feats[self.feature_index] if self.uses_features else None
    out, new_state = self.loss_terms(logits, student_feat, params, state, meta_params, batch)
    new_state["student"] = student_stats
    return out, new_state
