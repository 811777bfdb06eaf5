"""FitNet-MKD: hint (feature regression) losses to every teacher with equal weights, plus AVER KD.

The hint layer is ``config.feature_layer`` (the reference uses feat[2]). One regressor per
teacher maps the student's map to the teacher's (the reference's ``ConvReg`` cases): stride-2
3x3 conv when the student map is twice as large, stride-2 4x4 transposed conv when half as
large, a (1 + Hs - Ht) valid conv when larger otherwise, a 3x3 conv (after bilinear
upsampling when four times smaller) when smaller; then BN + ReLU.
Raw terms: ``ce``, ``kd = mean_t mean_b KL_t`` (AVER's) and ``feat = mean_t MSE_t``; weight 100
on the hints from the second epoch on (the reference's training loop). Unlike the reference,
whose averaging rebuilt the hint loss from plain floats and so cut the autograd graph, the hint
term trains the regressors and the student; ``fitnet.hint_gradient=False`` computes it as the
original did (logged, but no gradient).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

import ml_collections

from mmkd_jax.distill import losses
from mmkd_jax.methods.base import RunInfo, TeacherWeights, WeightedTermsMethod, apply_student, kd_matrix, loss_weights, register
from mmkd_jax.models.layers import BatchNorm, conv, torch_uniform

Array = jax.Array


class HintRegressor(nn.Module):
  target_shape: tuple[int, int, int]  # (H, W, C) of the teacher map
  torch_init: bool = False  # PyTorch's default init (the original's), not kaiming-normal + zero bias

  @nn.compact
  def __call__(self, x: Array) -> Array:
    hs, (ht, _, ct) = x.shape[1], self.target_shape
    torch_from = x.shape[-1] if self.torch_init else 0
    if hs == 2 * ht:
      x = conv(ct, 3, 2, 1, use_bias=True, name="conv", torch_default_from=torch_from)(x)
    elif 2 * hs == ht:
      # PyTorch counts a transposed conv's fan-in over its output channels (weight.size(1)).
      inits = {"kernel_init": torch_uniform(ct * 16), "bias_init": torch_uniform(ct * 16)} if self.torch_init else {}
      x = nn.ConvTranspose(ct, (4, 4), strides=(2, 2), padding="SAME", name="conv", **inits)(x)
    elif hs >= ht:
      x = conv(ct, 1 + hs - ht, 1, 0, use_bias=True, name="conv", torch_default_from=torch_from)(x)
    else:
      if 4 * hs == ht:
        x = jax.image.resize(x, (x.shape[0], ht, ht, x.shape[3]), "bilinear")
      x = conv(ct, 3, 1, 1, use_bias=True, name="conv", torch_default_from=torch_from)(x)
      if x.shape[1] != ht:
        x = jax.image.resize(x, (x.shape[0], ht, ht, ct), "bilinear")
    return nn.relu(BatchNorm(name="bn")(x, True))


class HintRegressors(nn.Module):
  teacher_shapes: Sequence[tuple[int, int, int]]
  torch_init: bool = False

  @nn.compact
  def __call__(self, student_feat: Array) -> list[Array]:
    return [HintRegressor(tuple(s), self.torch_init, name=f"regressor{t}")(student_feat)
            for t, s in enumerate(self.teacher_shapes)]




@dataclasses.dataclass(frozen=True)
class FitNetMKD(WeightedTermsMethod):
  hint_gradient: bool = True
  torch_init: bool = False


  def feature_module(self) -> HintRegressors:
    return HintRegressors(self.run.teacher_shapes, self.torch_init)

  def compute_terms(self, params, state, meta_params, batch):
    del meta_params
    feats, logits, stats = apply_student(self.student, params, state, batch["image"])
    kd = kd_matrix(logits, batch["teacher_logits"], self.temperature)
    projected, match_stats = self.apply_feature_module(params, state, feats)
    hints = jnp.mean(jnp.stack([jnp.mean(jnp.square(p - t.astype(p.dtype)))
                                for p, t in zip(projected, batch["teacher_feat"])]))
    if not self.hint_gradient:
      hints = jax.lax.stop_gradient(hints)
    uniform = jnp.full(kd.shape, 1.0 / self.run.num_teachers, kd.dtype)
    terms = {"ce": losses.cross_entropy(logits, batch["label"]), "kd": jnp.mean(kd), "feat": hints}
    return (terms, dict(state, student=stats, match=match_stats),
            {"logits": logits, "teacher_weights": TeacherWeights(logits=uniform, feature=uniform)})


@register("fitnet", terms={"ce": 1.0, "kd": 1.0, "feat": 100.0}, feature_layer=2, feat_from_epoch=1,
          section={"hint_gradient": True})
def build(config: ml_collections.ConfigDict, run: RunInfo) -> FitNetMKD:
  """FitNet-MKD: hints at feat[2] to every teacher plus AVER KD."""
  return FitNetMKD(run, loss_weights(config), config.temperature,
                   hint_gradient=config.fitnet.hint_gradient, torch_init=config.adapter_init == "torch")
