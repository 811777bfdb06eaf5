"""methods/kd.py: single-teacher KD."""

from __future__ import annotations

import jax
import numpy as np

from helpers import method_and_batch


def test_single_teacher_kd_is_hinton_kd_from_that_teacher():
  method, batch = method_and_batch("kd", **{"kd.teacher_index": 1})
  params, state, meta = method.init(jax.random.key(0), batch)
  _, (_, terms) = method.train_objective(params, state, meta, batch)
  z_s, z_t = np.asarray(terms["logits"], np.float64) / 4, np.asarray(batch["teacher_logits"][:, 1], np.float64) / 4
  log_p = lambda z: z - np.log(np.sum(np.exp(z - z.max(-1, keepdims=True)), -1, keepdims=True)) - z.max(-1, keepdims=True)
  expected = 16 * np.mean(np.sum(np.exp(log_p(z_t)) * (log_p(z_t) - log_p(z_s)), -1))
  np.testing.assert_allclose(terms["terms"]["kd"], expected, rtol=1e-5)
  np.testing.assert_array_equal(terms["teacher_weights"].logits[:, 1], 1.0)
