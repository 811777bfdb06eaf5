"""CA-MKD (Zhang, Chen, Wang, ICASSP 2022): confidence-aware multi-teacher KD.

Logits: each teacher's weight is ``(1 - softmax_over_teachers(CE_t)) / (T - 1)`` of its own
cross-entropy on the label, and ``L_div = sum_{b,t} w KL / (B T)``.
Features: the student's feat[-2] is pooled (or bilinearly upsampled) to each teacher's size and
embedded (1x1 conv + BN + ReLU); *teacher t's own classifier head* applied to that embedding
gives a CE whose confidence weights ``omega`` (not detached) weigh
``L_feat = sum_{b,t} omega MSE / (B T)``. Deviation from the reference: it overwrote the pooled
student map inside its loop (teachers of different sizes chained); here each teacher starts from
the student's map.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmkd_jax.distill import losses
from mmkd_jax.distill.align import Embed
from mmkd_jax.distill.base import JointMethod, kd_matrix, teacher_cross_entropy
from mmkd_jax.distill.logit_weighting import confidence_weights

Array = jax.Array


def resize_to(x: Array, size: int) -> Array:
  """Adaptive average pooling down, bilinear (align_corners=False) upsampling up."""
  if x.shape[1] >= size:
    return losses.adaptive_avg_pool(x, size)
  return jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "bilinear")


class CAEmbeds(nn.Module):
  teacher_shapes: Sequence[tuple[int, int, int]]

  @nn.compact
  def __call__(self, student_feat: Array) -> list[Array]:
    return [Embed(c, name=f"regressor{t}")(resize_to(student_feat, h))
            for t, (h, _, c) in enumerate(self.teacher_shapes)]


@dataclasses.dataclass(frozen=True)
class CAMKD(JointMethod):
  teacher_shapes: Sequence[tuple[int, int, int]] = ()
  # Each teacher's classifier (kernel (C_t, classes), bias); constants, never trained.
  teacher_heads: Sequence[tuple[np.ndarray, np.ndarray]] = ()

  @property
  def embeds(self) -> CAEmbeds:
    return CAEmbeds(tuple(tuple(s) for s in self.teacher_shapes))

  def init_extra(self, rng, batch, feats, logits):
    if not self.beta:
      return {}, {}
    v = self.embeds.init(rng, feats[self.feature_index])
    return {"match": v["params"]}, {"match": v["batch_stats"]}

  def loss_terms(self, params, state, batch, feats, logits):
    kd = kd_matrix(logits, batch["teacher_logits"], self.temperature)
    w = jax.lax.stop_gradient(confidence_weights(teacher_cross_entropy(batch["teacher_logits"], batch["label"])))
    terms = {"loss_div": self.alpha * jnp.sum(w * kd) / kd.size, "logits_weights": w}
    if not self.beta:
      return terms, state
    embedded, updated = self.embeds.apply({"params": params["match"], "batch_stats": state["match"]},
                                          feats[self.feature_index], mutable=["batch_stats"])
    head_logits, mse = [], []
    for h, target, (kernel, bias) in zip(embedded, batch["teacher_feat"], self.teacher_heads):
      head_logits.append(jnp.mean(h, axis=(1, 2)) @ jnp.asarray(kernel, h.dtype) + jnp.asarray(bias, h.dtype))
      mse.append(losses.per_sample_mse(h, target.astype(h.dtype)))
    omega = confidence_weights(teacher_cross_entropy(jnp.stack(head_logits, axis=1), batch["label"]))
    per_sample = jnp.stack(mse, axis=-1)
    terms.update(loss_feat=self.beta * jnp.sum(omega * per_sample) / per_sample.size, feature_weights=omega)
    return terms, dict(state, match=updated["batch_stats"])
