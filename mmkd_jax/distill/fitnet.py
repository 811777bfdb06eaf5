"""FitNet-MKD: hint (feature regression) losses to every teacher with equal weights, plus AVER KD.

The hint layer is ``config.feature_layer`` (the reference uses feat[2]). One regressor per
teacher maps the student's map to the teacher's (the reference's ``ConvReg`` cases): stride-2
3x3 conv when the student map is twice as large, stride-2 4x4 transposed conv when half as
large, a (1 + Hs - Ht) valid conv when larger otherwise, a 3x3 conv (after bilinear
upsampling when four times smaller) when smaller; then BN + ReLU.
``L = CE + alpha * mean_t KL_t + beta * mean_t MSE_t``. Unlike the reference, whose averaging
cut the autograd graph, the hint term trains the regressors and the student.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmkd_jax.distill.base import JointMethod, kd_matrix
from mmkd_jax.models.layers import BatchNorm, conv

Array = jax.Array


class HintRegressor(nn.Module):
  target_shape: tuple[int, int, int]  # (H, W, C) of the teacher map

  @nn.compact
  def __call__(self, x: Array) -> Array:
    hs, (ht, _, ct) = x.shape[1], self.target_shape
    if hs == 2 * ht:
      x = conv(ct, 3, 2, 1, use_bias=True, name="conv")(x)
    elif 2 * hs == ht:
      x = nn.ConvTranspose(ct, (4, 4), strides=(2, 2), padding="SAME", name="conv")(x)
    elif hs >= ht:
      x = conv(ct, 1 + hs - ht, 1, 0, use_bias=True, name="conv")(x)
    else:
      if 4 * hs == ht:
        x = jax.image.resize(x, (x.shape[0], ht, ht, x.shape[3]), "bilinear")
      x = conv(ct, 3, 1, 1, use_bias=True, name="conv")(x)
      if x.shape[1] != ht:
        x = jax.image.resize(x, (x.shape[0], ht, ht, ct), "bilinear")
    return nn.relu(BatchNorm(name="bn")(x, True))


class HintRegressors(nn.Module):
  teacher_shapes: Sequence[tuple[int, int, int]]

  @nn.compact
  def __call__(self, student_feat: Array) -> list[Array]:
    return [HintRegressor(tuple(s), name=f"regressor{t}")(student_feat) for t, s in enumerate(self.teacher_shapes)]


@dataclasses.dataclass(frozen=True)
class FitNetMKD(JointMethod):
  teacher_shapes: Sequence[tuple[int, int, int]] = ()

  @property
  def regressors(self) -> HintRegressors:
    return HintRegressors(tuple(tuple(s) for s in self.teacher_shapes))

  def init_extra(self, rng, batch, feats, logits):
    v = self.regressors.init(rng, feats[self.feature_index])
    return {"match": v["params"]}, {"match": v["batch_stats"]}

  def loss_terms(self, params, state, batch, feats, logits):
    kd = kd_matrix(logits, batch["teacher_logits"], self.temperature)
    projected, updated = self.regressors.apply({"params": params["match"], "batch_stats": state["match"]},
                                               feats[self.feature_index], mutable=["batch_stats"])
    hints = jnp.stack([jnp.mean(jnp.square(p - t.astype(p.dtype)))
                       for p, t in zip(projected, batch["teacher_feat"])])
    uniform = jnp.full(kd.shape, 1.0 / self.num_teachers, kd.dtype)
    return ({"loss_div": self.alpha * jnp.mean(kd), "loss_feat": self.beta * jnp.mean(hints),
             "logits_weights": uniform, "feature_weights": uniform},
            dict(state, match=updated["batch_stats"]))
