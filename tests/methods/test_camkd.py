"""methods/camkd.py: confidence weights, the first-epoch rule."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mmkd_jax.methods.camkd import confidence_weights

from helpers import method_and_batch


def _terms(method, batch, epoch=1):
  params, state, meta = method.init(jax.random.key(0), batch)
  loss, (_, aux) = method.train_objective(params, state, meta, dict(batch, epoch=jnp.asarray(epoch)))
  return float(loss), {k: float(v) for k, v in aux["terms"].items()}


def test_camkd_confidence_weights_by_hand():
  ce = jnp.array([[0.1, 2.0, 5.0]])
  s = np.exp([0.1, 2.0, 5.0]) / np.exp([0.1, 2.0, 5.0]).sum()
  np.testing.assert_allclose(confidence_weights(ce)[0], (1 - s) / 2, rtol=1e-6)
  np.testing.assert_allclose(float(jnp.sum(confidence_weights(ce))), 1.0, rtol=1e-6)
  assert float(confidence_weights(ce)[0, 0]) > float(confidence_weights(ce)[0, 2])
  # Equal confidence -> equal weights.
  np.testing.assert_allclose(confidence_weights(jnp.ones((1, 4))), 0.25, rtol=1e-6)


def test_camkd_drops_the_feature_term_in_the_first_epoch():
  """The reference's training loop (loops.py): L = CE + KD in epoch 1, + 50 feat afterwards."""
  method, batch = method_and_batch("camkd")
  first, t = _terms(method, batch, epoch=0)
  later, _ = _terms(method, batch, epoch=1)
  assert t["feat"] > 0
  np.testing.assert_allclose(first, t["ce"] + t["kd"], rtol=1e-6)
  np.testing.assert_allclose(later, t["ce"] + t["kd"] + 50.0 * t["feat"], rtol=1e-6)
  always, _ = method_and_batch("camkd", feat_from_epoch=0)
  np.testing.assert_allclose(_terms(always, batch, epoch=0)[0], later, rtol=1e-6)
