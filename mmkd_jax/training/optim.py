"""Optimisers and schedules with PyTorch's exact semantics (the shared JAX_NOTES.md, section 2.3,
records what was measured against torch.optim), and the student's: a registered schedule
(``config.schedule``) with an optional linear warm-up, and a registered optimiser
(``config.optimizer``).

Add your own from a module in ``config.imports``::

    @optim.register_schedule("step_halving")
    def halving(lr, steps_per_epoch, fields):      # fields: the config (per-replica values applied)
      return lambda count: lr * 0.5 ** (count // (10 * steps_per_epoch))

    @optim.register_optimizer("lion")
    def lion(schedule, fields):
      return optax.lion(schedule, weight_decay=fields["weight_decay"])
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax.numpy as jnp
import ml_collections
import optax

from mmkd_jax.registry import Registry, origin_of


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


# ----------------------------------------------------------------------------------------
# The student's schedule and optimiser, chosen by name.

# (base lr, steps per epoch, fields) -> schedule; fields: the config with per-replica values.
ScheduleBuilder = Callable[[Any, int, Mapping[str, Any]], optax.Schedule]
OptimizerBuilder = Callable[[optax.Schedule, Mapping[str, Any]], optax.GradientTransformation]


@dataclasses.dataclass(frozen=True)
class ScheduleSpec:
  build: ScheduleBuilder
  spans_run: bool = False   # its shape depends on the run's length: config.schedule_epochs


SCHEDULES: Registry[ScheduleSpec] = Registry(
    "schedule", "Register your own with @mmkd_jax.training.optim.register_schedule in a module listed in config.imports.")
OPTIMIZERS: Registry[OptimizerBuilder] = Registry(
    "optimizer", "Register your own with @mmkd_jax.training.optim.register_optimizer in a module listed in config.imports.")
# Fields the step may take per replica (config.replicas): they enter the schedule and the
# optimiser as numbers.
TUNABLE = ("lr", "weight_decay", "warmup_epochs")


def register_schedule(name: str, spans_run: bool = False) -> Callable[[ScheduleBuilder], ScheduleBuilder]:
  """Decorator on ``build(lr, steps_per_epoch, fields) -> optax.Schedule``. ``spans_run``: the
  schedule reads ``fields["schedule_epochs"]`` (resolved to ``epochs`` when 0 and then fixed, so
  a resumed run with more epochs does not silently change it)."""
  def decorator(build: ScheduleBuilder) -> ScheduleBuilder:
    SCHEDULES.add(name, ScheduleSpec(build, spans_run), origin_of(build))
    return build
  return decorator


def register_optimizer(name: str) -> Callable[[OptimizerBuilder], OptimizerBuilder]:
  """Decorator on ``build(schedule, fields) -> optax.GradientTransformation``."""
  def decorator(build: OptimizerBuilder) -> OptimizerBuilder:
    OPTIMIZERS.add(name, build, origin_of(build))
    return build
  return decorator


@register_schedule("multistep")
def _multistep(lr: Any, steps_per_epoch: int, fields: Mapping[str, Any]) -> optax.Schedule:
  """The papers' (and the default): ``multistep_lr`` with ``lr_milestones`` and ``lr_decay``."""
  return multistep_lr(lr, steps_per_epoch, fields["lr_milestones"], fields["lr_decay"])


@register_schedule("cosine", spans_run=True)
def cosine_lr(lr: Any, steps_per_epoch: int, fields: Mapping[str, Any]) -> optax.Schedule:
  """``lr (1 + cos(pi t / T)) / 2`` per step over ``T = schedule_epochs * steps_per_epoch``
  steps, 0 after (torch's ``CosineAnnealingLR(T_max=T, eta_min=0)`` stepped every batch)."""
  total = max(int(fields["schedule_epochs"]) * steps_per_epoch, 1)
  return lambda count: lr * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(count, total) / total))


@register_schedule("constant")
def _constant(lr: Any, steps_per_epoch: int, fields: Mapping[str, Any]) -> optax.Schedule:
  del steps_per_epoch, fields
  return lambda count: lr * jnp.ones_like(count, jnp.float32)


def with_warmup(schedule: optax.Schedule, warmup_steps: Any) -> optax.Schedule:
  """``schedule`` times the linear ramp ``min(1, (t + 1) / W)``: the first step at ``lr / W``,
  the full rate from step ``W - 1`` on (torch's ``LinearLR(start_factor=1/W, total_iters=W-1)``
  stepped every batch, chained with the schedule). ``W`` may be traced (a replica's own)."""
  def warmed(count):
    ramp = jnp.minimum(1.0, (count + 1) / jnp.maximum(warmup_steps, 1e-9))
    return schedule(count) * jnp.where(warmup_steps > 0, ramp, 1.0)
  return warmed


@register_optimizer("sgd")
def _sgd(schedule: optax.Schedule, fields: Mapping[str, Any]) -> optax.GradientTransformation:
  """``torch.optim.SGD`` (the papers'): coupled L2 ``weight_decay``, ``momentum``, ``nesterov``."""
  return torch_sgd(schedule, fields["momentum"], fields["nesterov"], fields["weight_decay"])


@register_optimizer("adamw")
def torch_adamw(schedule: optax.Schedule, fields: Mapping[str, Any]) -> optax.GradientTransformation:
  """``torch.optim.AdamW``: decoupled ``weight_decay`` (``p -= lr * wd * p``), ``adam_betas``,
  eps 1e-8 outside the square root, bias-corrected moments."""
  b1, b2 = fields["adam_betas"]
  return optax.adamw(schedule, b1=b1, b2=b2, eps=1e-8, weight_decay=fields["weight_decay"])


class _Fields(Mapping):
  """The config's fields with per-replica values over them (``values`` may be traced)."""

  def __init__(self, config: ml_collections.ConfigDict, values: Mapping[str, Any]):
    self.config, self.values = config, values

  def __getitem__(self, key: str) -> Any:
    return self.values[key] if key in self.values else self.config[key]

  def __iter__(self):
    return iter(self.config)

  def __len__(self) -> int:
    return len(self.config)


def student_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int, values: Mapping[str, Any] | None = None
                      ) -> tuple[optax.Schedule, optax.GradientTransformation]:
  """(schedule, optimiser) of the student: ``config.schedule`` with ``warmup_epochs`` of linear
  warm-up and ``config.optimizer``; ``values`` (``TUNABLE`` fields, possibly traced) override the
  config's. Without warm-up the schedule is exactly the registered one."""
  fields = _Fields(config, dict(values or {}))
  schedule = SCHEDULES.get(config.schedule).build(fields["lr"], steps_per_epoch, fields)
  if "warmup_epochs" in (values or {}) or config.warmup_epochs:
    schedule = with_warmup(schedule, fields["warmup_epochs"] * steps_per_epoch)
  return schedule, OPTIMIZERS.get(config.optimizer)(schedule, fields)
