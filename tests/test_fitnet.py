"""methods/fitnet.py: the hint term and the original's graph cut."""

from __future__ import annotations

import jax
import optax

from helpers import method_and_batch

B, C = 16, 10


def _setup(name: str, feature_layer: int | None = None, **overrides):
  return method_and_batch(name, B, C, feature_layer, **overrides)


def test_fitnet_hint_trains_regressors_and_student():
  method, batch = _setup("fitnet")
  params, state, meta = method.init(jax.random.key(0), batch)

  def hint_only(p):
    _, (_, terms) = method.train_objective(p, state, meta, batch)
    return terms["terms"]["feat"]

  grads = jax.grad(hint_only)(params)
  assert float(optax.tree.norm(grads["match"])) > 0
  assert float(optax.tree.norm(grads["student"])) > 0  # the reference's graph cut gave 0 here


def test_fitnet_hint_gradient_false_is_the_originals_graph_cut():
  method, batch = _setup("fitnet", **{"fitnet.hint_gradient": False})
  params, state, meta = method.init(jax.random.key(0), batch)

  def hint_only(p):
    _, (_, terms) = method.train_objective(p, state, meta, batch)
    return terms["terms"]["feat"]

  assert float(hint_only(params)) > 0  # logged as the original logs it
  grads = jax.grad(hint_only)(params)
  assert float(optax.tree.norm(grads)) == 0.0
