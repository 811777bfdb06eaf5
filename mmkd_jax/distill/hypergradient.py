"""Exact hypergradients through an unrolled look-ahead of inner optimiser steps.

Nothing here knows about distillation. An *objective* is a pure function

    objective(params, model_state, meta_params, batch) -> (loss, (model_state, metrics))

where ``model_state`` carries non-differentiated state such as BatchNorm running
statistics. ``lookahead`` takes one inner optax step per objective; ``hypergradient``
differentiates an outer objective evaluated after the look-ahead with respect to
``meta_params``, through every inner step (optimizer state, momentum, weight decay and
BatchNorm batch statistics included). Two exact ways compute the same number:

* ``"reverse"``: reverse-over-reverse ``jax.grad`` of the whole unrolled look-ahead.
* ``"forward_over_reverse"``: the reverse recursion of reverse-mode hyperparameter
  optimisation (Franceschi et al., 2017) written with JAX primitives. Each inner step
  ``(params, opt_state) <- U(params, opt_state, grad L_t(params, meta))`` is linearised
  while the look-ahead runs (``jax.linearize`` of the joint gradient w.r.t. params and
  meta_params, so the primal work is not repeated); walking back, the adjoint of the
  update map U comes from ``jax.vjp`` (elementwise, cheap) and one forward-mode product
  with the stored linearisation gives both terms the recursion needs, the Hessian-vector
  product ``H_params v`` and the mixed product ``(d grad / d meta)^T v``. The first step
  needs only the mixed product, so its Hessian part is never built.

Both assume ``model_state`` does not change any loss (train-mode BatchNorm: running statistics
are outputs only); ``"reverse"`` also differentiates through it, the recursion does not.

``"original"`` is not exact: it is the reverse pass of the original MMKD code (L2T-ww's
``MetaSGD.meta_backward``), the adjoint recursion of *heavy-ball* SGD with coupled weight decay
(``v = c - lr a``; ``a <- a (1 - lr wd) + wd c + H v``; ``c <- momentum v``; meta grads
``+= (d grad / d meta)^T v``), applied whatever the optimiser is; with Nesterov (the reference
README's setting) it differs from the exact hypergradient. The look-ahead itself is the exact
forward pass of the configured optimiser, as in the original. It needs
``heavy_ball=(lr, momentum, weight_decay)``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

PyTree = Any
Objective = Callable[[PyTree, PyTree, PyTree, PyTree], tuple[jax.Array, tuple[PyTree, dict]]]

MODES = ("reverse", "forward_over_reverse", "original")


class LookaheadResult(NamedTuple):
  params: PyTree
  opt_state: PyTree
  model_state: PyTree
  losses: list[jax.Array]
  metrics: list[dict]
  model_states: list[PyTree] = []  # model_state after each step


def inner_step(optimizer: optax.GradientTransformation, objective: Objective, params: PyTree,
               opt_state: PyTree, model_state: PyTree, meta_params: PyTree, batch: PyTree,
               first_order: bool = False):
  """One optimiser step on ``objective``; returns (params, opt_state, model_state, loss, metrics).

  ``first_order`` evaluates the gradient at ``stop_gradient(params)``, dropping the Hessian
  terms of the inner loss (the hypergradient keeps only the direct mixed term ∂g/∂φ).
  """
  def loss_fn(p):
    return objective(p, model_state, meta_params, batch)

  at = jax.lax.stop_gradient(params) if first_order else params
  (loss, (new_state, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(at)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, new_state, loss, metrics


def lookahead(optimizer: optax.GradientTransformation, objectives: Sequence[Objective],
              params: PyTree, opt_state: PyTree, model_state: PyTree, meta_params: PyTree,
              batch: PyTree, first_order: bool = False, remat: bool = False) -> LookaheadResult:
  """Unrolls one inner step per objective, in order (``remat``: each step under
  ``jax.checkpoint``, so reverse mode stores only the steps' inputs)."""
  losses, metrics, states = [], [], []
  for objective in objectives:
    step = jax.checkpoint(inner_step, static_argnums=(0, 1, 7)) if remat else inner_step
    params, opt_state, model_state, loss, m = step(
        optimizer, objective, params, opt_state, model_state, meta_params, batch, first_order)
    losses.append(loss)
    metrics.append(m)
    states.append(model_state)
  return LookaheadResult(params, opt_state, model_state, losses, metrics, states)


def hypergradient(optimizer: optax.GradientTransformation, inner_objectives: Sequence[Objective],
                  outer_objective: Objective, params: PyTree, opt_state: PyTree,
                  model_state: PyTree, meta_params: PyTree, batch: PyTree,
                  first_order: bool = False, mode: str = "forward_over_reverse",
                  heavy_ball: tuple[Any, float, float] | None = None, remat: bool = False,
                  ) -> tuple[jax.Array, PyTree, LookaheadResult]:
  """``d outer(lookahead(params; meta_params)) / d meta_params``.

  Returns (final outer loss, hypergradient, look-ahead result). The look-ahead result is
  what a caller keeps when it does not roll back. ``mode`` picks one of ``MODES`` (the two
  exact ones agree up to rounding; see the module docstring); ``heavy_ball`` is
  ``(lr, momentum, weight_decay)`` for ``"original"``. ``remat`` wraps every look-ahead
  objective in ``jax.checkpoint``: its activations are recomputed instead of stored (less memory
  for the unrolled steps, more compute).
  """
  args = (optimizer, inner_objectives, outer_objective, params, opt_state, model_state, meta_params, batch)
  if mode == "reverse":
    return _reverse_over_reverse(*args, first_order, remat)
  if remat:
    inner_objectives = [jax.checkpoint(o) for o in inner_objectives]
    args = (optimizer, inner_objectives, outer_objective, params, opt_state, model_state, meta_params, batch)
  if mode == "forward_over_reverse":
    return _forward_over_reverse(*args, first_order)
  if mode == "original":
    if heavy_ball is None:
      raise ValueError("hypergradient mode 'original' needs heavy_ball=(lr, momentum, weight_decay)")
    return _original_recursion(*args, heavy_ball)
  raise ValueError(f"unknown hypergradient mode {mode!r}; expected one of {MODES}")


def _reverse_over_reverse(optimizer, inner_objectives, outer_objective, params, opt_state,
                          model_state, meta_params, batch, first_order, remat=False):
  def outer_after_lookahead(meta):
    result = lookahead(optimizer, inner_objectives, params, opt_state, model_state, meta, batch,
                       first_order, remat)
    final_loss, _ = outer_objective(result.params, result.model_state, meta, batch)
    return final_loss, result

  (final_loss, result), grads = jax.value_and_grad(outer_after_lookahead, has_aux=True)(meta_params)
  return final_loss, grads, result


def _split_inexact(tree: PyTree) -> tuple[list, Callable[[list], PyTree]]:
  """The floating-point leaves of ``tree`` and a function rebuilding it from new ones
  (integer leaves such as optax step counts are not differentiated)."""
  leaves, treedef = jax.tree.flatten(tree)
  is_float = [jnp.issubdtype(jnp.result_type(x), jnp.inexact) for x in leaves]

  def rebuild(float_leaves: list) -> PyTree:
    it = iter(float_leaves)
    return jax.tree.unflatten(treedef, [next(it) if f else x for x, f in zip(leaves, is_float)])

  return [x for x, f in zip(leaves, is_float) if f], rebuild


def _tree_add(a: PyTree, b: PyTree) -> PyTree:
  return jax.tree.map(jnp.add, a, b)


def _linearized_lookahead(optimizer, inner_objectives, params, opt_state, model_state, meta_params, batch):
  """The look-ahead, each step's joint gradient linearised: (records, result)."""
  records, losses, metrics, states = [], [], [], []
  for objective in inner_objectives:
    def joint_grad(p, objective=objective, model_state=model_state):
      (loss, (new_state, m)), grads = jax.value_and_grad(
          lambda p, meta: objective(p, model_state, meta, batch), argnums=(0, 1), has_aux=True)(
              p, meta_params)
      return grads, (loss, new_state, m)

    (grads, _), tangent_fn, (loss, model_state, m) = jax.linearize(joint_grad, params, has_aux=True)
    float_state, rebuild_state = _split_inexact(opt_state)
    records.append((params, float_state, rebuild_state, grads, tangent_fn))
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    losses.append(loss)
    metrics.append(m)
    states.append(model_state)
  return records, LookaheadResult(params, opt_state, model_state, losses, metrics, states)


def _forward_over_reverse(optimizer, inner_objectives, outer_objective, params, opt_state,
                          model_state, meta_params, batch, first_order):
  records, result = _linearized_lookahead(optimizer, inner_objectives, params, opt_state, model_state,
                                          meta_params, batch)
  (final_loss, _), (params_bar, meta_bar) = jax.value_and_grad(
      outer_objective, argnums=(0, 2), has_aux=True)(result.params, result.model_state, meta_params, batch)
  state_bar = [jnp.zeros_like(x) for x in _split_inexact(result.opt_state)[0]]
  for t in reversed(range(len(records))):
    p, float_state, rebuild_state, grads, tangent_fn = records[t]

    def update_map(p, float_state, g, rebuild_state=rebuild_state):
      updates, new_state = optimizer.update(g, rebuild_state(float_state), p)
      return optax.apply_updates(p, updates), _split_inexact(new_state)[0]

    _, update_vjp = jax.vjp(update_map, p, float_state, grads)
    p_bar, state_bar, grads_bar = update_vjp((params_bar, state_bar))
    hessian_v, mixed_v = tangent_fn(grads_bar)
    meta_bar = _tree_add(meta_bar, mixed_v)
    # params_bar of step 0 is the adjoint of the initial point, which nothing needs.
    params_bar = p_bar if (first_order or t == 0) else _tree_add(p_bar, hessian_v)
  return final_loss, meta_bar, result


def _original_recursion(optimizer, inner_objectives, outer_objective, params, opt_state, model_state,
                        meta_params, batch, heavy_ball):
  lr, momentum, weight_decay = heavy_ball
  records, result = _linearized_lookahead(optimizer, inner_objectives, params, opt_state, model_state,
                                          meta_params, batch)
  (final_loss, _), (a, meta_bar) = jax.value_and_grad(
      outer_objective, argnums=(0, 2), has_aux=True)(result.params, result.model_state, meta_params, batch)
  c = jax.tree.map(jnp.zeros_like, a)
  for t in reversed(range(len(records))):
    tangent_fn = records[t][-1]
    v = jax.tree.map(lambda c, a: c - lr * a, c, a)
    hessian_v, mixed_v = tangent_fn(v)
    meta_bar = _tree_add(meta_bar, mixed_v)
    a = jax.tree.map(lambda a, c, hv: a * (1 - lr * weight_decay) + weight_decay * c + hv, a, c, hessian_v)
    c = jax.tree.map(lambda v: momentum * v, v)
  return final_loss, meta_bar, result
