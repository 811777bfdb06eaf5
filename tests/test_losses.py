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
