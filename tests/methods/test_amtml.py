"""methods/amtml.py: instance weights, phases, reductions, the RKD terms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmkd_jax.methods import amtml

from helpers import method_and_batch, steps_and_state

B, C = 16, 10


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _rkd_distance_reference(student: np.ndarray, target: np.ndarray) -> float:
  """RKD's distance loss written out with loops, in float64."""
  def normalised(e):
    n = len(e)
    d = np.array([[0.0 if i == j else np.sqrt(max(np.sum((e[i] - e[j]) ** 2), 1e-12)) for j in range(n)]
                  for i in range(n)])
    return d / d[d > 0].mean()
  diff = np.abs(normalised(student) - normalised(target))
  return float(np.mean(np.where(diff < 1, 0.5 * diff ** 2, diff - 0.5)))


def test_amtml_weights_target_and_phases():
  method, batch = method_and_batch("amtml")
  params, state, meta = method.init(jax.random.key(0), batch)
  _, (_, terms) = method.train_objective(params, state, meta, batch)
  np.testing.assert_allclose(np.sum(terms["teacher_weights"].logits, -1), 1.0, rtol=1e-5)

  def div(p, epoch):
    _, (_, t) = method.train_objective(p, state, meta, dict(batch, epoch=jnp.asarray(epoch)))
    return t["terms"]["kd"]

  during = jax.grad(div)(params, 0)["adapter"]
  after = jax.grad(div)(params, 10_000)["adapter"]
  assert float(optax.tree.norm(during)) > 0 and float(optax.tree.norm(after)) == 0.0
  theta = jnp.ones((2, 4))
  np.testing.assert_allclose(amtml.instance_weights(jnp.ones((1, 4)), theta, jnp.ones(4)), [[0.5, 0.5]])
  z = jax.random.normal(jax.random.key(0), (6, 5))
  assert float(amtml.rkd_angle_loss(z, z)) == pytest.approx(0.0, abs=1e-7)


def test_amtml_reductions_differ_by_the_class_count():
  m_mean, batch = method_and_batch("amtml", **{"amtml.kd_reduction": "mean"})
  m_batch, _ = method_and_batch("amtml", **{"amtml.kd_reduction": "batchmean"})
  params, state, meta = m_mean.init(jax.random.key(0), batch)
  a = m_mean.train_objective(params, state, meta, batch)[1][1]["terms"]["kd"]
  b = m_batch.train_objective(params, state, meta, batch)[1][1]["terms"]["kd"]
  np.testing.assert_allclose(b / a, C, rtol=1e-5)


def test_rkd_distance_loss_and_the_faithful_amtml_term():
  """amtml.rkd_distance_loss equals the loop-written RKD distance; AMTML-KD adds it (weight 1)
  only under config.faithful, the original code's objective."""
  rng = np.random.default_rng(3)
  z, p = rng.normal(size=(6, 5)), rng.dirichlet(np.ones(5), size=6)
  np.testing.assert_allclose(float(amtml.rkd_distance_loss(jnp.asarray(z, jnp.float32), jnp.asarray(p, jnp.float32))),
                             _rkd_distance_reference(z, p), rtol=1e-5)
  assert float(amtml.rkd_distance_loss(jnp.asarray(z), jnp.asarray(2 * z))) == pytest.approx(0.0, abs=1e-6)
  plain, batch = method_and_batch("amtml")
  faithful, _ = method_and_batch("amtml", faithful=True)
  assert plain.weights["dist"] == 0.0 and faithful.weights["dist"] == 1.0
  params, state, meta = plain.init(jax.random.key(0), batch)
  loss_plain, (_, aux_plain) = plain.train_objective(params, state, meta, batch)
  loss_faithful, (_, aux) = faithful.train_objective(params, state, meta, batch)
  assert "dist" not in aux_plain["terms"] and float(aux["terms"]["dist"]) > 0
  np.testing.assert_allclose(float(loss_faithful) - float(loss_plain), float(aux["terms"]["dist"]), rtol=1e-4)


def test_amtml_adapter_does_not_move_after_its_phase():
  """Frozen latent vectors and adapter weights must not change at all: stop_gradient alone
  left them in the optimiser, whose weight decay shrank them to uniform weights by epoch ~100."""
  steps, state, raw = steps_and_state("amtml", **{"amtml.adapter_epochs": 1})
  step = jax.jit(steps.train_step)
  during, _ = step(state, raw, (), jnp.asarray(0, jnp.int32))
  after, _ = step(during, raw, (), jnp.asarray(1, jnp.int32))
  for a, b in zip(_leaves(state.params["adapter"]), _leaves(during.params["adapter"])):
    assert not np.array_equal(a, b)  # trained during the adapter phase
  for a, b in zip(_leaves(during.params["adapter"]), _leaves(after.params["adapter"])):
    np.testing.assert_array_equal(a, b)  # frozen after it, weight decay included
  assert any(not np.array_equal(a, b) for a, b in zip(_leaves(during.params["student"]), _leaves(after.params["student"])))
