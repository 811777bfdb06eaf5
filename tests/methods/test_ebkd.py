"""methods/ebkd.py: entropy weights by hand."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from mmkd_jax.methods.ebkd import ebkd_weights, entropy


def test_ebkd_weights_by_hand():
  # Teacher 0 is confident (low entropy), teacher 1 uniform (entropy log 3).
  z = jnp.array([[[10.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
  h = np.asarray(entropy(z))[0]
  w = np.asarray(ebkd_weights(z))[0]
  np.testing.assert_allclose(h[1], np.log(3), rtol=1e-6)
  np.testing.assert_allclose(w, 1 - h / h.sum(), rtol=1e-6)
  assert w[0] > w[1]
  np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-6)  # T - 1 = 1 for two teachers
  # Three teachers: rows sum to T - 1 = 2; underflowing probabilities give no NaN.
  z3 = jnp.array([[[1e4, 0.0], [0.0, 0.0], [3.0, 1.0]]])
  w3 = np.asarray(ebkd_weights(z3))
  assert np.all(np.isfinite(w3)) and np.isclose(w3.sum(), 2.0)
