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


def _torch_adam_reference(p, grads, lr, wd, betas=(0.9, 0.999), eps=1e-8):
  """torch.optim.Adam(weight_decay=wd): L2 added to the gradient, then Adam (float64)."""
  p, m, v = np.array(p, np.float64), 0.0, 0.0
  for t, g in enumerate(grads, start=1):
    d = np.asarray(g, np.float64) + wd * p
    m = betas[0] * m + (1 - betas[0]) * d
    v = betas[1] * v + (1 - betas[1]) * d * d
    p = p - lr * (m / (1 - betas[0] ** t)) / (np.sqrt(v / (1 - betas[1] ** t)) + eps)
  return p


def test_adam_l2_coupled():
  """Five steps against torch's Adam with coupled L2; the check must fail with no weight decay
  or 1000x it (the gradients are chosen so that the decay term matters)."""
  grads = [np.array([0.004, 0.003, -0.002]) * (1 + 0.5 * np.sin(t)) for t in range(5)]
  p0 = np.array([1.0, -2.0, 0.5])
  lr, wd = 1e-2, 3e-3
  opt = optim.torch_adam(lr, wd)
  p, state = jnp.asarray(p0), opt.init(jnp.asarray(p0))
  for g in grads:
    updates, state = opt.update(jnp.asarray(g), state, p)
    p = p + updates
  expected = _torch_adam_reference(p0, grads, lr, wd)
  np.testing.assert_allclose(p, expected, rtol=1e-6)
  for wrong in (0.0, 1000 * wd):  # the test can tell the decay apart
    assert not np.allclose(_torch_adam_reference(p0, grads, lr, wrong), expected, rtol=1e-4)
