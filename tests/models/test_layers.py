"""models/layers.py: PyTorch's window boundaries and initialisation."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from mmkd_jax.models.layers import adaptive_avg_pool


def test_adaptive_pool_matches_pytorch_windows():
  x = jnp.arange(5 * 5, dtype=jnp.float32).reshape(1, 5, 5, 1)
  pooled = np.asarray(adaptive_avg_pool(x, 2))[0, :, :, 0]
  # PyTorch windows for 5 -> 2: rows/cols [0, 3) and [2, 5).
  grid = np.arange(25, dtype=np.float32).reshape(5, 5)
  expected = [[grid[0:3, 0:3].mean(), grid[0:3, 2:5].mean()], [grid[2:5, 0:3].mean(), grid[2:5, 2:5].mean()]]
  np.testing.assert_allclose(pooled, expected)
