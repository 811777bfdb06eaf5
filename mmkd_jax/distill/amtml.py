"""AMTML-KD (Liu, Zhang, Wang, Neurocomputing 2020), as its public code computes it.

Instance-level teacher weights: each teacher t has a learned latent vector theta_t (dim D); with
the student's pooled feature beta_b and a shared vector W, ``mu_bt = softmax_t((beta_b * theta_t) . W)``.
The integrated soft target ``P_b = sum_t mu_bt softmax(z_t,b / T)`` is matched with
``2 alpha T^2 KLDiv(log softmax(z_s / T) || P)`` (element-mean reduction as coded, or
'batchmean'), plus ``(1 - alpha) CE``, an RKD angle loss between z_s and P, and multi-group
hints: for teacher j < T-1 the student's stage-(j+2) map, L2-normalised over channels and
projected by a 1x1 conv, regresses teacher j's L2-normalised, globally pooled feature.
theta and W train with the student for ``adapter_epochs`` and are then frozen. See
docs/methods.md for what the paper leaves open and what we chose.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmkd_jax.distill import losses
from mmkd_jax.distill.base import JointMethod

Array = jax.Array


def _l2_normalize(x: Array, axis: int = -1) -> Array:
  # sqrt(|x|^2 + eps): differentiable at x = 0 (the i == j difference vectors of the angle loss).
  return x * jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True) + 1e-12)


def instance_weights(pooled: Array, theta: Array, w: Array) -> Array:
  """``softmax_t((beta_b * theta_t) . W)``: (B, T)."""
  return jax.nn.softmax(jnp.einsum("bd,td,d->bt", pooled, theta, w), axis=-1)


def rkd_angle_loss(student: Array, target: Array) -> Array:
  """Relational KD angle loss: smooth-L1 between the cosines of all triplet difference vectors."""
  def angles(e):
    diff = _l2_normalize(e[None, :, :] - e[:, None, :])  # (B, B, D)
    return jnp.einsum("ijd,ikd->ijk", diff, diff).reshape(-1)
  d = jnp.abs(angles(student) - angles(jax.lax.stop_gradient(target)))
  return jnp.mean(jnp.where(d < 1.0, 0.5 * d ** 2, d - 0.5))


class GroupHints(nn.Module):
  target_channels: Sequence[int]

  @nn.compact
  def __call__(self, student_maps: Sequence[Array]) -> list[Array]:
    init = nn.initializers.uniform(scale=0.01)  # U(0, 0.01) shifted below to U(-0.005, 0.005)
    outs = []
    for j, (x, c) in enumerate(zip(student_maps, self.target_channels)):
      kernel = self.param(f"hint{j}", lambda k, s: init(k, s) - 0.005, (x.shape[-1], c))
      outs.append(_l2_normalize(x) @ kernel)
    return outs


@dataclasses.dataclass(frozen=True)
class AMTMLKD(JointMethod):
  teacher_channels: Sequence[int] = ()
  hint_weight: float = 1.0
  angle_weight: float = 1.0
  adapter_epochs: int = 80
  kd_reduction: str = "mean"  # 'mean' (as coded: / (B C)) or 'batchmean' (/ B)

  def _hint_maps(self, feats) -> list[Array]:
    # Stage j+2 of the student for teacher j < T-1 (maps only: the last entry is the pooled vector).
    maps = [f for f in feats[:-1] if f.ndim == 4]
    return [maps[min(j + 2, len(maps) - 1)] for j in range(self.num_teachers - 1)]

  def init_extra(self, rng, batch, feats, logits):
    k_theta, k_w, k_hint = jax.random.split(rng, 3)
    d = feats[-1].shape[-1]
    adapter = {"theta": jax.random.normal(k_theta, (self.num_teachers, d)), "w": jax.random.normal(k_w, (d,))}
    hints = GroupHints(tuple(self.teacher_channels[:-1])).init(k_hint, self._hint_maps(feats))["params"]
    return {"adapter": adapter, "hints": hints}, {}

  def loss_terms(self, params, state, batch, feats, logits):
    t = self.temperature
    adapter = params["adapter"]
    frozen = batch.get("epoch", 0) >= self.adapter_epochs
    theta = jnp.where(frozen, jax.lax.stop_gradient(adapter["theta"]), adapter["theta"])
    w = jnp.where(frozen, jax.lax.stop_gradient(adapter["w"]), adapter["w"])
    mu = instance_weights(feats[-1], theta, w)
    teacher_probs = jax.nn.softmax(batch["teacher_logits"].astype(logits.dtype) / t, axis=-1)  # (B, T, C)
    target = jnp.einsum("bt,btc->bc", mu, teacher_probs)
    log_p_s = jax.nn.log_softmax(logits / t, axis=-1)
    pointwise = target * (jnp.log(jnp.clip(target, 1e-30)) - log_p_s)
    divisor = target.size if self.kd_reduction == "mean" else target.shape[0]
    terms = {
        "loss_div": 2 * self.alpha * t ** 2 * jnp.sum(pointwise) / divisor,
        "loss_cls": (1 - self.alpha) * losses.cross_entropy(logits, batch["label"]),
        "logits_weights": mu,
    }
    if self.angle_weight:
      terms["loss_angle"] = self.angle_weight * rkd_angle_loss(logits, target)
    if self.hint_weight and self.num_teachers > 1:
      projected = GroupHints(tuple(self.teacher_channels[:-1])).apply({"params": params["hints"]},
                                                                      self._hint_maps(feats))
      mse = [jnp.mean(jnp.square(p - _l2_normalize(jnp.mean(f.astype(p.dtype), axis=(1, 2)))[:, None, None, :]))
             for p, f in zip(projected, batch["teacher_feat"])]
      terms["loss_feat"] = self.hint_weight * sum(mse)
    return terms, state
