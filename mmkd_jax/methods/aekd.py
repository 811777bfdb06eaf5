"""AEKD: adaptive ensemble KD in gradient space (Du et al., NeurIPS 2020).

The batch-mean gradient of each teacher's KD loss w.r.t. the student logits is
``g_t = T (p_s - p_t) / B`` (exact, so no extra backward passes are needed); the teacher weights
are the capped min-norm convex combination of the ``g_t`` (weights <= ``aekd.c``, the
reference's one-class SVM dual). Raw terms: ``ce`` and ``kd = sum_t lambda_t mean_b KL_t``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from mmkd_jax.distill import losses
from mmkd_jax.methods.base import (RunInfo, WeightedTermsMethod, apply_student, kd_matrix,
                                   loss_weights, register)

Array = jax.Array


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
class AEKD(WeightedTermsMethod):
  c: float = 0.6
  normalize_gradients: bool = False

  def teacher_weights(self, logits: Array, teacher_logits: Array) -> Array:
    """The capped min-norm weights (T,) of the teachers' batch-mean logit gradients."""
    t = self.temperature
    p_s = jax.nn.softmax(jax.lax.stop_gradient(logits) / t, axis=-1)
    p_t = jax.nn.softmax(teacher_logits.astype(logits.dtype) / t, axis=-1)
    grads = t * jnp.mean(p_s[:, None, :] - p_t, axis=0) / logits.shape[0]  # (T, C)
    norms = jnp.linalg.norm(grads, axis=-1)
    if self.normalize_gradients:
      grads = grads / (norms[:, None] + 1e-12)
    lam = min_norm_weights(grads @ grads.T, aekd_cap(self.run.num_teachers, self.c))
    if self.normalize_gradients:
      lam = lam / (norms + 1e-12)
      lam = lam / jnp.sum(lam)
    return jax.lax.stop_gradient(lam)

  def compute_terms(self, params, state, meta_params, batch):
    del meta_params
    _, logits, stats = apply_student(self.student, params, state, batch["image"])
    kd = kd_matrix(logits, batch["teacher_logits"], self.temperature)
    lam = self.teacher_weights(logits, batch["teacher_logits"])
    terms = {"ce": losses.cross_entropy(logits, batch["label"]), "kd": jnp.sum(lam * jnp.mean(kd, axis=0))}
    return terms, dict(state, student=stats), {"logits": logits, "logits_weights": jnp.broadcast_to(lam, kd.shape)}


@register("aekd", terms={"ce": 1.0, "kd": 1.0}, section={"c": 0.6, "normalize": False})
def build(config: ml_collections.ConfigDict, run: RunInfo) -> AEKD:
  """AEKD: min-norm weights of the teachers' logit gradients (cap aekd.c)."""
  return AEKD(run, loss_weights(config, AEKD.terms), config.temperature, c=config.aekd.c,
              normalize_gradients=config.aekd.normalize)
