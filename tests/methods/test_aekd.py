"""methods/aekd.py: the min-norm weights against brute force and an independent solver."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmkd_jax.methods import aekd


def _slsqp(gram, cap):
  from scipy import optimize  # pylint: disable=import-outside-toplevel
  t, g = gram.shape[0], gram / np.trace(gram)
  result = optimize.minimize(lambda x: x @ g @ x, np.full(t, 1 / t), jac=lambda x: 2 * g @ x, method="SLSQP",
                             bounds=[(0, cap)] * t, options={"ftol": 1e-16, "maxiter": 1000},
                             constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1, "jac": lambda x: np.ones(t)}])
  return result.x


def _brute_force_min_norm(gram: np.ndarray, cap: float, step: float = 2e-3) -> float:
  best = np.inf
  grid = np.arange(0, 1 + step / 2, step)
  for a, b in itertools.product(grid, grid):
    c = 1 - a - b
    lam = np.array([a, b, c])
    if c < -1e-12 or np.any(lam > cap + 1e-12):
      continue
    best = min(best, lam @ gram @ lam)
  return best


@pytest.mark.parametrize("seed", range(4))
def test_aekd_min_norm_matches_brute_force(seed):
  g = np.random.default_rng(seed).standard_normal((3, 5))
  gram = g @ g.T
  for cap in (1.0, 0.6, 0.4):
    lam = aekd.min_norm_weights(gram, cap)
    assert np.isclose(lam.sum(), 1.0, atol=1e-12) and lam.min() >= 0 and lam.max() <= cap + 1e-12
    assert lam @ gram @ lam <= _brute_force_min_norm(gram, cap) + 1e-12


@pytest.mark.parametrize("spread", [1e-1, 1e-2, 1e-3])
@pytest.mark.parametrize("teachers", [3, 5, 10])
def test_aekd_weights_match_an_independent_solver_on_ill_conditioned_grams(spread, teachers):
  """Near-identical teachers (condition numbers up to ~1e7): the *weights* agree with scipy's
  SLSQP to 1e-4 (the old fixed 300 projected-gradient steps were off by up to 0.66 here), at
  any scale of the Gram matrix, and the duality gap is zero."""
  rng = np.random.default_rng(teachers)
  for _ in range(3):
    g = rng.standard_normal(100) + spread * rng.standard_normal((teachers, 100))
    for cap in (1.0, 0.6 if teachers == 3 else 0.3):
      for scale in (1.0, 1e-10):  # the digits run's Gram traces are ~1e-7 .. 1e-5
        lam = aekd.min_norm_weights(scale * g @ g.T, cap)
        np.testing.assert_allclose(lam, _slsqp(g @ g.T, cap), atol=1e-4)
        assert aekd.duality_gap(g @ g.T / np.trace(g @ g.T), lam, cap) <= 1e-9


def test_aekd_limits():
  # Orthogonal gradients of equal norm: the min-norm point is the centre.
  np.testing.assert_allclose(aekd.min_norm_weights(np.eye(3), 0.6), [1 / 3] * 3, atol=1e-12)
  # A teacher whose KD gradient is already zero takes all the weight it may (the cap).
  lam = aekd.min_norm_weights(np.diag([0.0, 1.0, 4.0]), 0.6)
  np.testing.assert_allclose(lam, [0.6, 0.32, 0.08], atol=1e-12)  # rest split inversely to squared norms
  assert aekd.aekd_cap(3, 0.6) == pytest.approx(0.6)
  assert aekd.aekd_cap(3, 0.2) == pytest.approx(1 / 3)  # nu clipped to 1: forced equal weights
  assert aekd.aekd_cap(3, 1.0) == pytest.approx(1.0)
  # Inside a jitted step: the host callback gives the same weights.
  np.testing.assert_allclose(jax.jit(lambda g: aekd.device_min_norm_weights(g, 0.6))(jnp.diag(jnp.array([0.0, 1.0, 4.0]))),
                             [0.6, 0.32, 0.08], atol=1e-6)


def test_capped_simplex_projection_is_the_projection():
  rng = np.random.default_rng(1)
  for _ in range(20):
    v = rng.standard_normal(5) * 2
    p = aekd.capped_simplex_projection(v, 0.5)
    assert np.isclose(p.sum(), 1.0, atol=1e-12) and p.min() >= 0 and p.max() <= 0.5 + 1e-12
    for _ in range(20):  # variational inequality: (v - p) . (y - p) <= 0 for feasible y
      y = aekd.capped_simplex_projection(rng.standard_normal(5), 0.5)
      assert (v - p) @ (y - p) <= 1e-9
