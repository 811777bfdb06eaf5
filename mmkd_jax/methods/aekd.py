"""AEKD: adaptive ensemble KD in gradient space (Du et al., NeurIPS 2020).

The batch-mean gradient of each teacher's KD loss w.r.t. the student logits is
``g_t = T (p_s - p_t) / B`` (exact, so no extra backward passes are needed); the teacher weights
are the capped min-norm convex combination of the ``g_t`` (weights <= ``aekd.c``, the
reference's one-class SVM dual), solved exactly on the host in float64 (the reference also
solves it on the CPU, with libsvm). Raw terms: ``ce`` and ``kd = sum_t lambda_t mean_b KL_t``.

The reference's libsvm call stops at an *absolute* tolerance of 1e-6 on the dual's gradient,
which is not scale-aware: the Gram entries here are ~(T / B)^2 |p_s - p_t|^2, so at small scales
libsvm stops at once and returns its starting point. This solver normalises the Gram matrix by
its trace, so its answer does not depend on the scale (``train_diag_gram_trace`` logs it).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmkd_jax.distill import losses
from mmkd_jax.methods.base import (RunInfo, TeacherWeights, WeightedTermsMethod, apply_student, kd_matrix,
                                   loss_weights, register)

Array = jax.Array


def _linear_minimizer(c: np.ndarray, cap: float) -> np.ndarray:
  """argmin_y c.y over {0 <= y <= cap, sum y = 1}: fill the cheapest coordinates up to the cap."""
  y, left = np.zeros_like(c), 1.0
  for i in np.argsort(c):
    y[i] = min(cap, left)
    left -= y[i]
    if left <= 0:
      break
  return y


def duality_gap(gram: np.ndarray, lam: np.ndarray, cap: float) -> float:
  """Frank-Wolfe duality gap of ``lam`` for min l^T G l over the capped simplex (0 at the optimum)."""
  grad = 2 * gram @ lam
  return float(grad @ lam - grad @ _linear_minimizer(grad, cap))


def _active_set(gram: np.ndarray, cap: float, tol: float = 1e-10, max_iterations: int = 1000) -> np.ndarray:
  """Primal active-set method (Nocedal & Wright, Alg. 16.3) for min l^T G l, sum l = 1,
  0 <= l <= cap: each iteration solves the equality-constrained problem on the free weights
  (a small KKT system) and either steps to a blocking bound or releases the bound whose
  multiplier is negative. Finite and exact up to rounding."""
  t = gram.shape[0]
  lam = capped_simplex_projection(np.full(t, 1.0 / t), cap)
  bound = {i: (0.0 if lam[i] <= tol else cap) for i in range(t) if lam[i] <= tol or lam[i] >= cap - tol}
  for _ in range(max_iterations):
    free = [i for i in range(t) if i not in bound]
    grad = 2 * gram @ lam
    step = np.zeros(t)
    if free:
      k = len(free)
      kkt = np.zeros((k + 1, k + 1))
      kkt[:k, :k] = 2 * gram[np.ix_(free, free)]
      kkt[:k, k] = kkt[k, :k] = 1.0
      step[free] = np.linalg.lstsq(kkt, np.concatenate([-grad[free], [0.0]]), rcond=None)[0][:k]
    if np.max(np.abs(step)) <= tol:
      # Multipliers of the active bounds, with the equality's multiplier from the free weights
      # (or, at a vertex, the value that best satisfies them all).
      lower = [i for i, v in bound.items() if v == 0.0]
      upper = [i for i, v in bound.items() if v != 0.0]
      if free:
        nu = -np.mean(grad[free])
      else:
        lo = -min(grad[lower]) if lower else -np.inf
        hi = -max(grad[upper]) if upper else np.inf
        nu = 0.5 * (lo + hi) if np.isfinite(lo) and np.isfinite(hi) else (lo if np.isfinite(lo) else hi)
      multipliers = {i: (grad[i] + nu) if bound[i] == 0.0 else -(grad[i] + nu) for i in bound}
      worst = min(multipliers, key=multipliers.get, default=None)
      if worst is None or multipliers[worst] >= -tol:
        return np.clip(lam, 0.0, cap)
      del bound[worst]
      continue
    alpha, blocking = 1.0, None
    for i in free:
      if step[i] < -tol and (0.0 - lam[i]) / step[i] < alpha:
        alpha, blocking = (0.0 - lam[i]) / step[i], (i, 0.0)
      elif step[i] > tol and (cap - lam[i]) / step[i] < alpha:
        alpha, blocking = (cap - lam[i]) / step[i], (i, cap)
    lam = lam + alpha * step
    if blocking is not None:
      lam[blocking[0]] = blocking[1]
      bound[blocking[0]] = blocking[1]
  raise RuntimeError(f"AEKD's min-norm solver did not converge in {max_iterations} iterations")


def capped_simplex_projection(v: np.ndarray, cap: float) -> np.ndarray:
  """Euclidean projection onto {0 <= x <= cap, sum x = 1} (bisection on the shift)."""
  lo, hi = v.min() - cap, v.max()
  for _ in range(200):
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if np.clip(v - mid, 0.0, cap).sum() > 1.0 else (lo, mid)
  return np.clip(v - 0.5 * (lo + hi), 0.0, cap)


def min_norm_weights(gram: np.ndarray, cap: float = 1.0) -> np.ndarray:
  """``argmin_l l^T G l`` over the capped simplex, in float64 on the host: AEKD's min-norm point of
  the (capped) convex hull of the teachers' gradients, the problem of its libsvm one-class SVM.

  Scale-invariant (G is divided by its trace first), solved by a primal active-set method: it
  stops at the exact optimum (zero duality gap, ``duality_gap``), whatever the conditioning.
  """
  gram = np.asarray(gram, np.float64)
  scale = np.trace(gram)
  t = gram.shape[0]
  if not np.isfinite(scale) or scale <= 0:
    return capped_simplex_projection(np.full(t, 1.0 / t), cap)
  gram = gram / scale
  return _active_set(gram, cap)


def device_min_norm_weights(gram: Array, cap: float) -> Array:
  """``min_norm_weights`` inside a jitted step (a host callback, like the reference's CPU solver)."""
  return jax.pure_callback(lambda g: min_norm_weights(g, cap).astype(np.float32),
                           jax.ShapeDtypeStruct(gram.shape[:1], jnp.float32),
                           jax.lax.stop_gradient(gram), vmap_method="sequential").astype(gram.dtype)


def aekd_cap(num_teachers: int, c: float) -> float:
  """The reference's cap: nu = clip(1 / (C T), 1/T, 1), weights <= 1 / (nu T)."""
  nu = min(max(1.0 / (c * num_teachers), 1.0 / num_teachers), 1.0)
  return 1.0 / (nu * num_teachers)


@dataclasses.dataclass(frozen=True)
class AEKD(WeightedTermsMethod):
  c: float = 0.6
  normalize_gradients: bool = False

  def teacher_weights(self, logits: Array, teacher_logits: Array) -> tuple[Array, Array]:
    """The capped min-norm weights (T,) of the teachers' batch-mean logit gradients, and the
    trace of their Gram matrix (logged: its scale decides the reference solver's accuracy)."""
    t = self.temperature
    p_s = jax.nn.softmax(jax.lax.stop_gradient(logits) / t, axis=-1)
    p_t = jax.nn.softmax(teacher_logits.astype(logits.dtype) / t, axis=-1)
    grads = t * jnp.mean(p_s[:, None, :] - p_t, axis=0) / logits.shape[0]  # (T, C)
    norms = jnp.linalg.norm(grads, axis=-1)
    if self.normalize_gradients:
      grads = grads / (norms[:, None] + 1e-12)
    gram = grads @ grads.T
    lam = device_min_norm_weights(gram, aekd_cap(self.run.num_teachers, self.c))
    if self.normalize_gradients:
      lam = lam / (norms + 1e-12)
      lam = lam / jnp.sum(lam)
    return jax.lax.stop_gradient(lam), jnp.trace(gram)

  def compute_terms(self, params, state, meta_params, batch):
    del meta_params
    _, logits, stats = apply_student(self.student, params, state, batch["image"])
    kd = kd_matrix(logits, batch["teacher_logits"], self.temperature)
    lam, gram_trace = self.teacher_weights(logits, batch["teacher_logits"])
    terms = {"ce": losses.cross_entropy(logits, batch["label"]), "kd": jnp.sum(lam * jnp.mean(kd, axis=0))}
    return terms, dict(state, student=stats), {"logits": logits, "teacher_weights": TeacherWeights(logits=jnp.broadcast_to(lam, kd.shape)),
                                               "diagnostics": {"gram_trace": gram_trace}}


@register("aekd", terms={"ce": 1.0, "kd": 1.0}, section={"c": 0.6, "normalize": False})
def build(config: ml_collections.ConfigDict, run: RunInfo) -> AEKD:
  """AEKD: min-norm weights of the teachers' logit gradients (cap aekd.c)."""
  return AEKD(run, loss_weights(config), config.temperature, c=config.aekd.c,
              normalize_gradients=config.aekd.normalize)
