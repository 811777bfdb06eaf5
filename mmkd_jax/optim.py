"""Optimisers and schedules with PyTorch's exact semantics (the shared JAX_NOTES.md, section 2.3,
records what was measured against torch.optim)."""

from __future__ import annotations

from typing import Any, Sequence

import optax


def torch_sgd(learning_rate: float | optax.Schedule, momentum: float = 0.9, nesterov: bool = True,
              weight_decay: float = 5e-4) -> optax.GradientTransformation:
  """``torch.optim.SGD``: weight decay added to the gradient *before* momentum.

  PyTorch's first step sets the buffer to the gradient itself; optax's zero-initialised
  trace gives the same ``0.9 * 0 + d``, so trajectories agree to rounding.
  """
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov))


def torch_adam(learning_rate: float, weight_decay: float = 0.0) -> optax.GradientTransformation:
  """``torch.optim.Adam`` with its L2-coupled ``weight_decay`` (not AdamW)."""
  return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(learning_rate))


def multistep_lr(base_lr: float, steps_per_epoch: int, milestones: Sequence[int],
                 rate: float = 0.1) -> optax.Schedule:
  """The reference's schedule: lr x rate at the start of each epoch *after* a milestone epoch.

  With milestones (150, 180, 210) the rate changes for epochs 151, 181, 211 (1-based), i.e.
  after 150 * steps_per_epoch steps.
  """
  return optax.piecewise_constant_schedule(
      base_lr, {int(m) * steps_per_epoch: rate for m in sorted(milestones)})


def set_momentum(opt_state: Any, buffers: Any) -> Any:
  """Replaces the SGD momentum buffers (the ``trace`` of a ``torch_sgd`` state)."""
  return optax.tree_utils.tree_set(opt_state, trace=buffers)



def momentum_of(opt_state: Any) -> Any:
  """The SGD momentum buffers (the ``trace``) of a ``torch_sgd`` state."""
  return optax.tree_utils.tree_get(opt_state, "trace")


def step_count(opt_state: Any) -> Any:
  """The step count the learning-rate schedule of a ``torch_sgd`` state reads (None: a constant
  learning rate, no count)."""
  return optax.tree_utils.tree_get(opt_state, "count", default=None)
