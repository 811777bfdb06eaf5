"""methods/bomd.py: orthogonal projections and global weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmkd_jax.methods import bomd

from helpers import method_and_batch


def test_bomd_projection_stays_orthogonal_under_many_updates():
  key = jax.random.key(0)
  generator = jnp.zeros((64, 64))
  opt = optax.sgd(0.5, momentum=0.9)
  state = opt.init(generator)
  target = jax.random.normal(key, (64, 48))

  def loss(g):
    return jnp.sum(jnp.square(bomd.projection(g, 48, 64).T - target))

  for _ in range(300):
    grads = jax.grad(loss)(generator)
    updates, state = opt.update(grads, state)
    generator = optax.apply_updates(generator, updates)
  p = bomd.projection(generator, 48, 64)
  assert float(jnp.max(jnp.abs(generator))) > 0.1  # it really moved
  np.testing.assert_allclose(p @ p.T, np.eye(48), atol=1e-5)
  wide = bomd.projection(generator, 64, 48)  # student wider than teacher: orthonormal columns
  np.testing.assert_allclose(wide.T @ wide, np.eye(48), atol=1e-5)


def test_bomd_weights_are_a_distribution():
  method, batch = method_and_batch("bomd")
  params, state, meta = method.init(jax.random.key(0), batch)
  meta = {"teacher_logits": jnp.array([1.0, 0.0, -1.0])}
  _, (_, terms) = method.train_objective(params, state, meta, batch)
  w = np.asarray(terms["teacher_weights"].logits[0])
  np.testing.assert_allclose(w, np.exp([1, 0, -1]) / np.exp([1, 0, -1]).sum(), rtol=1e-6)
