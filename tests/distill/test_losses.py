"""distill/losses.py against hand-computed values."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from mmkd_jax.distill import losses


def test_kd_hand_computed():
  z_s = jnp.array([[0.0, 0.0]])
  z_t = jnp.array([[4.0, 0.0]])
  p = np.exp([1.0, 0.0]) / np.sum(np.exp([1.0, 0.0]))  # teacher at T=4
  expected = 16 * np.sum(p * (np.log(p) - np.log([0.5, 0.5])))
  np.testing.assert_allclose(losses.kd_per_sample(z_s, z_t, 4.0), [expected], rtol=1e-6)
  np.testing.assert_allclose(losses.kd_per_sample(z_t, z_t, 4.0), [0.0], atol=1e-7)


def test_smooth_labels_is_torch_cross_entropy_with_smoothed_targets():
  """torch CrossEntropyLoss(label_smoothing=e): -sum_k q_k log p_k with q = (1-e) onehot + e/C."""
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((6, 5)) * 3
  labels = rng.integers(0, 5, 6)
  e = 0.1
  q = (1 - e) * np.eye(5)[labels] + e / 5
  log_p = logits - np.log(np.sum(np.exp(logits), axis=1, keepdims=True))
  expected = np.mean(-np.sum(q * log_p, axis=1))
  hard = losses.cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(labels))
  np.testing.assert_allclose(losses.smooth_labels(hard, jnp.asarray(logits, jnp.float32), e), expected, rtol=1e-6)
  assert not np.isclose(float(hard), expected, rtol=1e-3)
