"""optax chains with PyTorch semantics, checked against hand-written PyTorch update rules."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

from mmkd_jax import optim


def _torch_sgd_reference(p, grads, lr, mu, wd, nesterov, buf=None):
  for g in grads:
    d = g + wd * p
    buf = d if buf is None else mu * buf + d
    p = p - lr * (d + mu * buf if nesterov else buf)
  return p, buf


def test_sgd_matches_pytorch_rule():
  rng = np.random.default_rng(0)
  p0 = rng.standard_normal(5)
  grads = [rng.standard_normal(5) for _ in range(6)]
  for nesterov in (False, True):
    opt = optim.torch_sgd(0.05, 0.9, nesterov, 5e-4)
    p, state = jnp.asarray(p0), opt.init(jnp.asarray(p0))
    for g in grads:
      updates, state = opt.update(jnp.asarray(g), state, p)
      p = optax.apply_updates(p, updates)
    expected, buf = _torch_sgd_reference(p0, grads, 0.05, 0.9, 5e-4, nesterov)
    np.testing.assert_allclose(p, expected, rtol=1e-6)
    np.testing.assert_allclose(optim.momentum_of(state), buf, rtol=1e-6)


def test_set_momentum_continues_from_given_buffer():
  opt = optim.torch_sgd(0.1, 0.9, True, 0.0)
  p = jnp.ones(3)
  state = optim.set_momentum(opt.init(p), jnp.full(3, 2.0))
  updates, _ = opt.update(jnp.full(3, 1.0), state, p)
  buf = 0.9 * 2.0 + 1.0
  np.testing.assert_allclose(updates, -0.1 * (1.0 + 0.9 * buf))


def test_multistep_lr_changes_after_milestone_epochs():
  schedule = optim.multistep_lr(0.05, 10, (150, 180, 210))
  np.testing.assert_allclose(schedule(1499), 0.05)
  np.testing.assert_allclose(schedule(1500), 0.005)
  np.testing.assert_allclose(schedule(1800), 0.0005, rtol=1e-6)
  np.testing.assert_allclose(schedule(2100), 0.00005, rtol=1e-6)


def test_adam_l2_coupled():
  opt = optim.torch_adam(1e-3, 1e-4)
  p = jnp.array([1.0, -1.0])
  updates, _ = opt.update(jnp.array([0.5, 0.5]), opt.init(p), p)
  # First Adam step moves each coordinate by lr * sign(g + wd * p).
  np.testing.assert_allclose(updates, [-1e-3, -1e-3], rtol=1e-4)
