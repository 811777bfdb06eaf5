"""CA-MKD (Zhang, Chen, Wang, ICASSP 2022): confidence-aware multi-teacher KD.

Logits: each teacher's weight is ``(1 - softmax_over_teachers(CE_t)) / (T - 1)`` of its own
cross-entropy on the label; raw ``kd = sum_{b,t} w KL / (B T)``.
Features: the student's feat[-2] is pooled (or bilinearly upsampled) to each teacher's size and
embedded (1x1 conv + BN + ReLU); *teacher t's own classifier head* applied to that embedding
gives a CE whose confidence weights ``omega`` (not detached) weigh raw
``feat = sum_{b,t} omega MSE / (B T)`` (weight 50, from the second epoch on, as the reference's
training loop: ``feat_from_epoch``). Deviation from the reference: it overwrote the
pooled student map inside its loop (teachers of different sizes chained); here each teacher
starts from the student's map.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmkd_jax.distill import losses
from mmkd_jax.distill.align import Embed
from mmkd_jax.methods.base import RunInfo, TeacherWeights, WeightedTermsMethod, apply_student, kd_matrix, loss_weights, register
from mmkd_jax.models.layers import adaptive_avg_pool
from mmkd_jax.errors import ConfigError

Array = jax.Array


def confidence_weights(per_teacher_ce: Array) -> Array:
  """``(1 - softmax_over_teachers(CE)) / (T - 1)``; rows sum to one."""
  t = per_teacher_ce.shape[-1]
  return (1.0 - jax.nn.softmax(per_teacher_ce, axis=-1)) / (t - 1)


def resize_to(x: Array, size: int) -> Array:
  """Adaptive average pooling down, bilinear (align_corners=False) upsampling up."""
  if x.shape[1] >= size:
    return adaptive_avg_pool(x, size)
  return jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "bilinear")


class CAEmbeds(nn.Module):
  teacher_shapes: Sequence[tuple[int, int, int]]
  torch_init: bool = False

  @nn.compact
  def __call__(self, student_feat: Array) -> list[Array]:
    return [Embed(c, torch_init=self.torch_init, name=f"regressor{t}")(resize_to(student_feat, h))
            for t, (h, _, c) in enumerate(self.teacher_shapes)]




@dataclasses.dataclass(frozen=True)
class CAMKD(WeightedTermsMethod):
  # Each teacher's classifier (kernel (C_t, classes), bias); constants, never trained.
  teacher_heads: Sequence[tuple[np.ndarray, np.ndarray]] = ()
  torch_init: bool = False


  def feature_module(self) -> CAEmbeds | None:
    return CAEmbeds(self.run.teacher_shapes, self.torch_init) if self.weights["feat"] else None

  def compute_terms(self, params, state, meta_params, batch):
    del meta_params
    feats, logits, stats = apply_student(self.student, params, state, batch["image"])
    kd = kd_matrix(logits, batch["teacher_logits"], self.temperature)
    w = jax.lax.stop_gradient(confidence_weights(losses.per_sample_cross_entropy(batch["teacher_logits"],
                                                                                 batch["label"])))
    terms = {"ce": losses.cross_entropy(logits, batch["label"]), "kd": jnp.sum(w * kd) / kd.size}
    extras = {"logits": logits, "teacher_weights": TeacherWeights(logits=w)}
    new_state = dict(state, student=stats)
    if not self.weights["feat"]:
      return terms, new_state, extras
    embedded, new_state["match"] = self.apply_feature_module(params, state, feats)
    head_logits, mse = [], []
    for h, target, (kernel, bias) in zip(embedded, batch["teacher_feat"], self.teacher_heads):
      head_logits.append(jnp.mean(h, axis=(1, 2)) @ jnp.asarray(kernel, h.dtype) + jnp.asarray(bias, h.dtype))
      mse.append(losses.per_sample_mse(h, target.astype(h.dtype)))
    omega = confidence_weights(losses.per_sample_cross_entropy(jnp.stack(head_logits, axis=1), batch["label"]))
    per_sample = jnp.stack(mse, axis=-1)
    terms["feat"] = jnp.sum(omega * per_sample) / per_sample.size
    extras["teacher_weights"] = TeacherWeights(logits=w, feature=omega)
    return terms, new_state, extras


@register("camkd", terms={"ce": 1.0, "kd": 1.0, "feat": 50.0}, feat_from_epoch=1)
def build(config: ml_collections.ConfigDict, run: RunInfo) -> CAMKD:
  """CA-MKD: confidence-aware logit and feature weights."""
  weights = loss_weights(config)
  heads = tuple(t.head for t in run.teachers)
  if weights["feat"] and any(h is None for h in heads):
    missing = [t.arch for t in run.teachers if t.head is None]
    raise ConfigError(f"config.weights.feat: CA-MKD's feature term applies each teacher's classifier, "
                      f"but {missing} were registered without classifier=...; register them with it "
                      "or set --config.weights.feat=0")
  return CAMKD(run, weights, config.temperature, teacher_heads=heads, torch_init=config.adapter_init == "torch")
