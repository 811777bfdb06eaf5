"""Loss functions shared by every method, in the reference's exact reductions."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mmkd_jax.models.layers import adaptive_avg_pool

Array = jax.Array


def per_sample_cross_entropy(logits: Array, labels: Array) -> Array:
  """Softmax cross-entropy per sample; ``logits`` (B, ..., C), ``labels`` (B,) -> (B, ...)."""
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  index = labels.astype(jnp.int32).reshape(labels.shape + (1,) * (logits.ndim - 1))
  return -jnp.take_along_axis(log_probs, index, axis=-1)[..., 0]


def cross_entropy(logits: Array, labels: Array) -> Array:
  """Mean softmax cross-entropy with integer labels (PyTorch ``F.cross_entropy``)."""
  return jnp.mean(per_sample_cross_entropy(logits, labels))


def smooth_labels(cross_entropy_value: Array, logits: Array, smoothing: Array | float) -> Array:
  """The mean cross-entropy against labels smoothed by ``smoothing`` (torch's
  ``CrossEntropyLoss(label_smoothing=e)``: the target ``(1 - e) onehot + e / C``), from the mean
  hard-label cross-entropy of the same ``logits`` (B, C): ``(1 - e) ce + e mean_{b,k} -log p_bk``."""
  # at least float32 (bfloat16 logits), float64 where the run is: a float32 term times a replica's
  # float64 smoothing value rounds otherwise than times the single run's Python float
  uniform = -jnp.mean(jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=-1))
  return (1.0 - smoothing) * cross_entropy_value + smoothing * uniform


def kd_per_sample(student_logits: Array, teacher_logits: Array, temperature: float) -> Array:
  """``T^2 * KL(p_t || p_s)`` per sample at temperature T, summed over classes: shape (B,).

  ``teacher_logits`` may carry leading teacher axes, e.g. (T, B, C) gives (T, B).
  """
  log_p_s = jax.nn.log_softmax(student_logits / temperature, axis=-1)
  log_p_t = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
  return temperature ** 2 * jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)


def kd_batchmean(student_logits: Array, teacher_logits: Array, temperature: float) -> Array:
  """``KLDivLoss(reduction='batchmean') * T^2``: the batch mean of ``kd_per_sample``."""
  return jnp.mean(kd_per_sample(student_logits, teacher_logits, temperature), axis=-1)


def pool_to_common_size(student_feat: Array, teacher_feat: Array) -> tuple[Array, Array]:
  """The reference's rule: pool the larger map down to the smaller (heights compared only)."""
  hs, ht = student_feat.shape[1], teacher_feat.shape[1]
  if hs > ht:
    return adaptive_avg_pool(student_feat, ht), teacher_feat
  return student_feat, adaptive_avg_pool(teacher_feat, hs)


def per_sample_mse(a: Array, b: Array) -> Array:
  """Mean over all non-batch axes of the squared difference: shape (B,)."""
  return jnp.mean(jnp.square(a - b).reshape(a.shape[0], -1), axis=-1)


def weighted_batch_sum(per_sample: Array, weights: Array) -> Array:
  """``sum_{b,t} w[b,t] * loss[b,t] / B`` for per-sample, per-teacher losses of shape (B, T)."""
  return jnp.sum(weights * per_sample) / per_sample.shape[0]


def gram(feature_map: Array) -> Array:
  """The (B, B) batch Gram matrix ``F F^T`` of flattened maps (flatten order is irrelevant)."""
  flat = feature_map.reshape(feature_map.shape[0], -1)
  return flat @ flat.T


def top_k_correct(logits: Array, labels: Array, k: int) -> Array:
  """Per-sample 1.0 if the label is among the k largest logits."""
  k = min(k, logits.shape[-1])
  top = jax.lax.top_k(logits, k)[1]
  return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)


__all__ = ["cross_entropy", "per_sample_cross_entropy", "gram", "kd_batchmean", "kd_per_sample",
           "per_sample_mse", "pool_to_common_size", "top_k_correct", "weighted_batch_sum"]
