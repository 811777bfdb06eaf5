"""optax chains with PyTorch semantics, checked against hand-written PyTorch update rules, and the
student's registered schedules and optimisers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmkd_jax import config as config_lib
from mmkd_jax.training import optim


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


def _fields(**overrides):
  c = config_lib.base_config()
  config_lib.set_fields(c, overrides)
  return c


def test_cosine_schedule_follows_torch_cosine_annealing_per_step():
  """torch CosineAnnealingLR(T_max=T, eta_min=0) stepped per batch: lr_t = lr (1 + cos(pi t/T)) / 2."""
  schedule, _ = optim.student_optimizer(_fields(schedule="cosine", schedule_epochs=3, lr=0.1), steps_per_epoch=10)
  for t, expected in ((0, 0.1), (10, 0.075), (15, 0.05), (20, 0.025), (30, 0.0), (45, 0.0)):
    np.testing.assert_allclose(schedule(t), expected, atol=1e-8)


def test_warmup_ramps_any_schedule_linearly_and_takes_a_traced_length():
  """min(1, (t+1)/W) times the schedule: torch's LinearLR(start_factor=1/W, total_iters=W-1)."""
  c = _fields(schedule="multistep", lr=0.2, lr_milestones=(2,), warmup_epochs=0.5)
  schedule, _ = optim.student_optimizer(c, steps_per_epoch=8)  # W = 4 steps
  np.testing.assert_allclose([schedule(t) for t in (0, 1, 3, 10, 16)], [0.05, 0.1, 0.2, 0.2, 0.02], rtol=1e-6)
  no_warmup = _fields(schedule="multistep", lr=0.2, lr_milestones=(2,))  # a replica's own warm-up over none
  traced = jax.jit(lambda w, t: optim.student_optimizer(no_warmup, 8, {"warmup_epochs": w})[0](t))
  np.testing.assert_allclose(traced(jnp.float32(1.0), 3), 0.2 * 4 / 8, rtol=1e-6)
  np.testing.assert_allclose(traced(jnp.float32(0.0), 3), 0.2, rtol=1e-6)
  constant, _ = optim.student_optimizer(_fields(schedule="constant", lr=0.3), steps_per_epoch=8)
  np.testing.assert_allclose([constant(0), constant(10 ** 6)], [0.3, 0.3], rtol=1e-7)


def test_default_student_optimizer_is_the_papers_multistep_sgd_bit_for_bit():
  c = config_lib.base_config()
  schedule, opt = optim.student_optimizer(c, steps_per_epoch=3)
  reference = optim.torch_sgd(optim.multistep_lr(c.lr, 3, c.lr_milestones, c.lr_decay), c.momentum, c.nesterov,
                              c.weight_decay)
  rng = np.random.default_rng(1)
  p = q = jnp.asarray(rng.standard_normal(4), jnp.float32)
  s, r = opt.init(p), reference.init(q)
  for _ in range(4):
    g = jnp.asarray(rng.standard_normal(4), jnp.float32)
    u, s = opt.update(g, s, p)
    v, r = reference.update(g, r, q)
    p, q = optax.apply_updates(p, u), optax.apply_updates(q, v)
  assert np.array_equal(p, q)


def _torch_adamw_reference(p, grads, lr, wd, betas=(0.9, 0.999), eps=1e-8):
  """torch.optim.AdamW: p *= 1 - lr wd, then the Adam step (float64)."""
  p, m, v = np.array(p, np.float64), 0.0, 0.0
  for t, g in enumerate(grads, start=1):
    p = p * (1 - lr * wd)
    m = betas[0] * m + (1 - betas[0]) * g
    v = betas[1] * v + (1 - betas[1]) * g * g
    p = p - lr * (m / (1 - betas[0] ** t)) / (np.sqrt(v / (1 - betas[1] ** t)) + eps)
  return p


def test_adamw_matches_torch_decoupled_decay():
  """Five steps against torch's AdamW rule; coupled L2 (torch Adam) or no decay must not match."""
  grads = [np.array([0.004, 0.003, -0.002]) * (1 + 0.5 * np.sin(t)) for t in range(5)]
  p0 = np.array([1.0, -2.0, 0.5])
  lr, wd = 1e-2, 0.3
  _, opt = optim.student_optimizer(_fields(optimizer="adamw", schedule="constant", lr=lr, weight_decay=wd,
                                           adam_betas=(0.8, 0.99)), steps_per_epoch=1)
  p, state = jnp.asarray(p0), opt.init(jnp.asarray(p0))
  for g in grads:
    updates, state = opt.update(jnp.asarray(g), state, p)
    p = p + updates
  expected = _torch_adamw_reference(p0, grads, lr, wd, betas=(0.8, 0.99))
  np.testing.assert_allclose(p, expected, rtol=1e-6)
  assert not np.allclose(_torch_adamw_reference(p0, grads, lr, 0.0, (0.8, 0.99)), expected, rtol=1e-4)
  assert not np.allclose(_torch_adam_reference(p0, grads, lr, wd, (0.8, 0.99)), expected, rtol=1e-4)


def test_a_registered_schedule_and_optimizer_are_chosen_by_name():
  @optim.register_schedule("halving_test")
  def halving(lr, steps_per_epoch, fields):
    del fields
    return lambda count: lr * 0.5 ** (count // steps_per_epoch)

  @optim.register_optimizer("plain_sgd_test")
  def plain(schedule, fields):
    del fields
    return optax.sgd(schedule)

  schedule, opt = optim.student_optimizer(_fields(schedule="halving_test", optimizer="plain_sgd_test", lr=1.0), 2)
  np.testing.assert_allclose([schedule(1), schedule(2), schedule(5)], [1.0, 0.5, 0.25])
  updates, _ = opt.update(jnp.ones(2), opt.init(jnp.zeros(2)))
  np.testing.assert_allclose(updates, [-1.0, -1.0])
