"""distill/meta_nets.py: the meta-weight network's outputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mmkd_jax.distill.meta_nets import WeightMLP


def test_weights_on_simplex_and_uniform_at_symmetric_input():
  mlp = WeightMLP(3)
  x = jax.random.normal(jax.random.key(0), (5, 40))
  params = mlp.init(jax.random.key(1), x)
  w = mlp.apply(params, x)
  np.testing.assert_allclose(np.sum(w, -1), 1.0, rtol=1e-6)
  assert np.all(np.asarray(w) > 0) and float(np.std(np.asarray(w))) > 1e-3
  # Symmetric in the teachers (every output unit the same): exactly uniform, whatever the input.
  symmetric = jax.tree.map(lambda a: a, params)
  head = symmetric["params"]["all_act"]
  head["kernel"] = jnp.repeat(head["kernel"][:, :1], 3, axis=1)
  head["bias"] = jnp.full((3,), head["bias"][0])
  np.testing.assert_allclose(mlp.apply(symmetric, x), 1 / 3, rtol=1e-6)
