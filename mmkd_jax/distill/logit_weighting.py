"""Baselines that weight per-teacher KD terms by a fixed rule: single-teacher KD, EBKD, CA-MKD's
logit part, AEKD. Each returns ``loss_div`` and the (B, T) ``logits_weights`` it used.
Normalisations follow the reference code (see docs/methods.md): they differ between methods.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mmkd_jax.distill.base import JointMethod, entropy, kd_matrix, teacher_cross_entropy

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SingleTeacherKD(JointMethod):
  """Hinton KD from one teacher: CE + alpha * T^2 KL(p_t || p_s), batch mean."""
  teacher_index: int = 0

  def loss_terms(self, params, state, batch, feats, logits):
    kd = kd_matrix(logits, batch["teacher_logits"], self.temperature)  # (B, T)
    weights = jax.nn.one_hot(jnp.full(logits.shape[:1], self.teacher_index), self.num_teachers)
    return {"loss_div": self.alpha * jnp.mean(kd[:, self.teacher_index]), "logits_weights": weights}, state


def ebkd_weights(teacher_logits: Array) -> Array:
  """``w = 1 - H_k / sum_j H_j`` from each teacher's entropy at temperature 1; rows sum to T - 1."""
  h = entropy(teacher_logits)  # (B, T)
  return 1.0 - h / jnp.sum(h, axis=-1, keepdims=True)


@dataclasses.dataclass(frozen=True)
class EBKD(JointMethod):
  """Entropy-based weights: confident (low-entropy) teachers weigh more. L_div = sum w KL / (B T)."""

  def loss_terms(self, params, state, batch, feats, logits):
    kd = kd_matrix(logits, batch["teacher_logits"], self.temperature)
    w = jax.lax.stop_gradient(ebkd_weights(batch["teacher_logits"]))
    return {"loss_div": self.alpha * jnp.sum(w * kd) / kd.size, "logits_weights": w}, state


def confidence_weights(per_teacher_ce: Array) -> Array:
  """CA-MKD: ``(1 - softmax_over_teachers(CE)) / (T - 1)``; rows sum to one."""
  t = per_teacher_ce.shape[-1]
  return (1.0 - jax.nn.softmax(per_teacher_ce, axis=-1)) / (t - 1)


def capped_simplex_projection(v: Array, cap: float, iterations: int = 60) -> Array:
  """Euclidean projection of v onto {x : 0 <= x <= cap, sum x = 1} (bisection on the shift)."""
  lo, hi = jnp.min(v) - cap, jnp.max(v)

  def body(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    too_big = jnp.sum(jnp.clip(v - mid, 0.0, cap)) > 1.0
    return jnp.where(too_big, mid, lo), jnp.where(too_big, hi, mid)

  lo, hi = jax.lax.fori_loop(0, iterations, body, (lo, hi))
  return jnp.clip(v - 0.5 * (lo + hi), 0.0, cap)


def min_norm_weights(gram: Array, cap: float = 1.0, iterations: int = 300) -> Array:
  """``argmin_l l^T G l`` over the capped simplex, by projected gradient descent.

  G is positive semi-definite; the step 1/trace(G) is below 1/lambda_max, so every step
  decreases the objective. This is AEKD's min-norm point of the (capped) convex hull of the
  teachers' gradients, the same problem as its libsvm one-class SVM dual.
  """
  t = gram.shape[0]
  step = 1.0 / (jnp.trace(gram) + 1e-12)
  start = capped_simplex_projection(jnp.full((t,), 1.0 / t, gram.dtype), cap)

  def body(_, lam):
    return capped_simplex_projection(lam - step * (gram @ lam), cap)

  return jax.lax.fori_loop(0, iterations, body, start)


def aekd_cap(num_teachers: int, c: float) -> float:
  """The reference's cap: nu = clip(1 / (C T), 1/T, 1), weights <= 1 / (nu T)."""
  nu = min(max(1.0 / (c * num_teachers), 1.0 / num_teachers), 1.0)
  return 1.0 / (nu * num_teachers)


@dataclasses.dataclass(frozen=True)
class AEKD(JointMethod):
  """Adaptive ensemble KD in gradient space (Du et al., NeurIPS 2020).

  The batch-mean gradient of each teacher's KD loss w.r.t. the student logits is
  ``g_t = T (p_s - p_t) / B`` (exact, so no extra backward passes are needed); the weights are
  the capped min-norm convex combination of the ``g_t``; L_div = sum_t lambda_t KL_t.
  """
  c: float = 0.6
  normalize_gradients: bool = False

  def loss_terms(self, params, state, batch, feats, logits):
    kd = kd_matrix(logits, batch["teacher_logits"], self.temperature)
    t = self.temperature
    p_s = jax.nn.softmax(jax.lax.stop_gradient(logits) / t, axis=-1)
    p_t = jax.nn.softmax(batch["teacher_logits"].astype(logits.dtype) / t, axis=-1)
    grads = t * jnp.mean(p_s[:, None, :] - p_t, axis=0) / logits.shape[0]  # (T, C)
    norms = jnp.linalg.norm(grads, axis=-1)
    if self.normalize_gradients:
      grads = grads / (norms[:, None] + 1e-12)
    lam = min_norm_weights(grads @ grads.T, aekd_cap(self.num_teachers, self.c))
    if self.normalize_gradients:
      lam = lam / (norms + 1e-12)
      lam = lam / jnp.sum(lam)
    lam = jax.lax.stop_gradient(lam)
    weights = jnp.broadcast_to(lam, kd.shape)
    return {"loss_div": self.alpha * jnp.sum(lam * jnp.mean(kd, axis=0)), "logits_weights": weights}, state


__all__ = ["AEKD", "EBKD", "SingleTeacherKD", "aekd_cap", "capped_simplex_projection", "confidence_weights",
           "ebkd_weights", "min_norm_weights", "teacher_cross_entropy"]
