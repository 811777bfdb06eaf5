"""methods/fitnet.py: the hint term and the original's graph cut."""

from __future__ import annotations

import jax
import optax

from helpers import method_and_batch


def test_fitnet_hint_trains_regressors_and_student():
  method, batch = method_and_batch("fitnet")
  params, state, meta = method.init(jax.random.key(0), batch)

  def hint_only(p):
    _, (_, terms) = method.train_objective(p, state, meta, batch)
    return terms["terms"]["feat"]

  grads = jax.grad(hint_only)(params)
  assert float(optax.tree.norm(grads["match"])) > 0
  assert float(optax.tree.norm(grads["student"])) > 0  # the reference's graph cut gave 0 here


def test_fitnet_hint_gradient_false_is_the_originals_graph_cut():
  method, batch = method_and_batch("fitnet", **{"fitnet.hint_gradient": False})
  params, state, meta = method.init(jax.random.key(0), batch)

  def hint_only(p):
    _, (_, terms) = method.train_objective(p, state, meta, batch)
    return terms["terms"]["feat"]

  assert float(hint_only(params)) > 0  # logged as the original logs it
  grads = jax.grad(hint_only)(params)
  assert float(optax.tree.norm(grads)) == 0.0
