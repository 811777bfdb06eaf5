"""Exact hypergradients through an unrolled look-ahead of inner optimiser steps.

Nothing here knows about distillation. An *objective* is a pure function

    objective(params, model_state, meta_params, batch) -> (loss, (model_state, metrics))

where ``model_state`` carries non-differentiated state such as BatchNorm running
statistics. ``lookahead`` takes one inner optax step per objective; ``hypergradient``
differentiates an outer objective evaluated after the look-ahead with respect to
``meta_params``, through every inner step (optimizer state, momentum, weight decay and
BatchNorm batch statistics included), by reverse-over-reverse ``jax.grad``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import optax

PyTree = Any
Objective = Callable[[PyTree, PyTree, PyTree, PyTree], tuple[jax.Array, tuple[PyTree, dict]]]


class LookaheadResult(NamedTuple):
  params: PyTree
  opt_state: PyTree
  model_state: PyTree
  losses: list[jax.Array]
  metrics: list[dict]


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
              batch: PyTree, first_order: bool = False) -> LookaheadResult:
  """Unrolls one inner step per objective, in order."""
  losses, metrics = [], []
  for objective in objectives:
    params, opt_state, model_state, loss, m = inner_step(
        optimizer, objective, params, opt_state, model_state, meta_params, batch, first_order)
    losses.append(loss)
    metrics.append(m)
  return LookaheadResult(params, opt_state, model_state, losses, metrics)


def hypergradient(optimizer: optax.GradientTransformation, inner_objectives: Sequence[Objective],
                  outer_objective: Objective, params: PyTree, opt_state: PyTree,
                  model_state: PyTree, meta_params: PyTree, batch: PyTree,
                  first_order: bool = False) -> tuple[jax.Array, PyTree, LookaheadResult]:
  """``d outer(lookahead(params; meta_params)) / d meta_params``.

  Returns (final outer loss, hypergradient, look-ahead result). The look-ahead result is
  what a caller keeps when it does not roll back.
  """
  def outer_after_lookahead(meta):
    result = lookahead(optimizer, inner_objectives, params, opt_state, model_state, meta, batch,
                       first_order)
    final_loss, _ = outer_objective(result.params, result.model_state, meta, batch)
    return final_loss, result

  (final_loss, result), grads = jax.value_and_grad(outer_after_lookahead, has_aux=True)(meta_params)
  return final_loss, grads, result
