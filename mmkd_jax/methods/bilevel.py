"""Bi-level training, one strategy owned here: teacher weights (``meta_params``) learned by the
hypergradient of the student's loss after an unrolled look-ahead (MMKD, BOMD-like, a user's).

A bi-level method is a registration (``@register(..., bilevel=True)``, which adds the hard buffer's
section and check and the look-ahead's default weights) plus its own math: a ``BilevelMethod``
with its terms. Everything else is the strategy's, which the steps and the dispatcher call
without knowing it is bi-level (``Plain`` for every other method):

* its extra state: the hard-example buffer (``init_buffer``; a method without one carries none),
  the meta parameters come from the method and their Adam state from the steps;
* the after-step hook (``after_step``): misclassified examples enter the buffer;
* the meta schedule (``is_meta_step``: every ``meta.freq`` batches, the loader's last batch, none
  during ``meta.warmup_epochs``);
* the meta step (``meta_update``): the hypergradient in the configured mode
  (``mmkd_jax.distill.hypergradient``) through the look-ahead objectives, Adam on ``meta_params``,
  the student's rollback;
* its config: the ``meta.*`` section (``add_meta_section``), its faithful switches
  (``FAITHFUL``) and checks (``check_config``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict
import optax

from mmkd_jax.distill import hard_buffer, losses
from mmkd_jax.distill import hypergradient
from mmkd_jax.errors import ConfigError
from mmkd_jax.methods.base import (METHODS, LossWeights, Method, Objective, WeightedTermsMethod, apply_student,
                                   lookahead_loss_weights, loss_weights)
from mmkd_jax.training import optim

PyTree = Any
ROLLBACK_BN = ("exact", "replay")
# config.faithful=True, the bi-level part: what the original PyTorch code computed, bugs included.
FAITHFUL = {
    "meta.hypergradient": "original",  # MMKD/L2T-ww's heavy-ball reverse pass, even under Nesterov
    "meta.rollback_bn": "replay",      # rollback keeps one BN update from replaying look-ahead step 1
    "meta.warmup_epochs": 0,           # MMKD's --meta_warmup changes nothing
}


def add_meta_section(c: ml_collections.ConfigDict, terms: Sequence[str]) -> None:
  """The ``meta.*`` fields of a config (``config.base_config``), with their defaults; ``terms``:
  every registered term, whose look-ahead weight a bi-level method may set."""
  c.meta = ml_collections.ConfigDict()
  c.meta.lr = 1e-3               # Adam learning rate of learned teacher weights (meta_params)
  c.meta.weight_decay = 1e-4     # Adam's L2-coupled weight decay (PyTorch Adam)
  c.meta.freq = 5                # meta step every `freq` batches and on the last batch of an epoch
  c.meta.warmup_epochs = 0       # epochs with uniform teacher weights and no meta step
  c.meta.lookahead_matching_steps = 2  # look-ahead steps on the look-ahead weights
  c.meta.lookahead_outer_steps = 1     # then steps on the outer objective (CE)
  c.meta.lookahead_weights = ml_collections.ConfigDict({t: config_dict.placeholder(float) for t in terms})
  c.meta.first_order = False     # drop the look-ahead's Hessian terms (cheaper, approximate)
  # How the exact hypergradient is computed (mmkd_jax.distill.hypergradient.MODES).
  c.meta.hypergradient = "forward_over_reverse"  # forward_over_reverse | reverse (exact) | original (the original code's)
  c.meta.remat = False           # recompute the look-ahead's activations (jax.checkpoint): less memory
  c.meta.rollback = True         # restore the student after the look-ahead (the reference always does)
  c.meta.rollback_bn = "exact"   # exact: restore BN statistics too; replay: the original's extra update


def check_config(config: ml_collections.ConfigDict) -> None:
  """The bi-level fields of a resolved config: their choices, and for a bi-level method the SGD
  rule and its hard buffer."""
  for field, allowed in (("hypergradient", hypergradient.MODES), ("rollback_bn", ROLLBACK_BN)):
    if config.meta[field] not in allowed:
      raise ConfigError(f"config.meta.{field}: {config.meta[field]!r} must be one of {', '.join(allowed)}")
  if config.meta.freq < 1:
    raise ConfigError("config.meta.freq: must be at least 1")
  if not METHODS.get(config.method).bilevel:
    return
  if config.optimizer != "sgd":
    raise ConfigError(f"config.optimizer: method {config.method!r} is bi-level: its look-ahead unrolls the student's "
                      "SGD step (momentum buffers and all), so it trains with optimizer=sgd")
  hard_buffer.check_section(config, config.method)


@dataclasses.dataclass(frozen=True)
class BilevelMethod(WeightedTermsMethod):
  """The math a bi-level method shares: its weights uniform during ``meta.warmup_epochs``
  (``warm_up``) and the outer objective, the student's cross-entropy."""
  warmup_epochs: int = 0   # uniform weights (and no meta step, ``is_meta_step``) before this epoch

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, run: Any, **fields: Any) -> "BilevelMethod":
    """The method of a resolved config: its loss weights, temperature and warm-up, and ``fields``."""
    return cls(run, loss_weights(config), config.temperature, warmup_epochs=config.meta.warmup_epochs, **fields)

  def warm_up(self, weights: jax.Array, batch: dict[str, Any]) -> jax.Array:
    """Per-sample teacher weights (B, T), uniform during ``meta.warmup_epochs``."""
    if "epoch" not in batch or self.warmup_epochs <= 0:
      return weights
    return jnp.where(batch["epoch"] < self.warmup_epochs, 1.0 / self.run.num_teachers, weights)

  def outer_objective(self, params, state, meta_params, batch):
    """Cross-entropy of the student on the (meta) batch, BatchNorm in train mode."""
    del meta_params
    _, logits, stats = apply_student(self.student, params, state, batch["image"])
    return losses.cross_entropy(logits, batch["label"]), (dict(state, student=stats), {"logits": logits})


def unrolled(method: Method, weights: LossWeights, matching_steps: int = 2, outer_steps: int = 1) -> list[Objective]:
  """The objectives of the unrolled look-ahead: ``matching_steps`` steps on the method's terms under
  the look-ahead ``weights``, then ``outer_steps`` on its outer objective (the reference's 2 + 1)."""
  return [method.objective(weights)] * matching_steps + [method.outer_objective] * outer_steps


def lookahead_objectives(config: ml_collections.ConfigDict, method: Method,
                         weights: LossWeights | None = None) -> list[Objective]:
  """The configured look-ahead (``meta.lookahead_*``; ``weights``: default the config's)."""
  return unrolled(method, weights if weights is not None else lookahead_loss_weights(config),
                  config.meta.lookahead_matching_steps, config.meta.lookahead_outer_steps)


@dataclasses.dataclass(frozen=True)
class MetaInputs:
  """What a meta step needs of the run's steps (``training.steps.Steps.meta_inputs``)."""
  device_batch: Callable[[dict, Sequence[PyTree]], dict]   # a host batch augmented, with teacher outputs
  schedule: Callable | None                                 # the student's learning rate by step
  weight_decay: Any                                         # the student's (a replica's own, maybe traced)
  data_sharding: Any                                        # batch-major sharding (None on one device)
  meta_optimizer: optax.GradientTransformation


class Plain:
  """The strategy of a method trained with the student alone: no buffer, no meta step."""

  def init_buffer(self, batch: dict[str, Any]) -> Any:
    del batch
    return {}

  def after_step(self, buffer: Any, batch: dict[str, Any], logits: jax.Array, key: jax.Array) -> Any:
    del batch, logits, key
    return buffer

  def is_meta_step(self, epoch: int, idx: int) -> bool:
    del epoch, idx
    return False

  def with_method(self, method: Method) -> "Plain":
    del method
    return self

  def with_values(self, values: dict[str, Any]) -> "Plain":
    del values
    return self

  def meta_update(self, inputs: MetaInputs, state: Any, raw: dict[str, Any], teacher_vars: Sequence[PyTree],
                  epoch: jax.Array) -> tuple[Any, dict[str, jax.Array]]:
    raise TypeError("a method that is not bi-level takes no meta step")


@dataclasses.dataclass(frozen=True)
class Bilevel:
  """The strategy of a bi-level method (``config`` resolved; ``steps_per_epoch`` and
  ``num_train`` for the loader's last batch)."""
  config: ml_collections.ConfigDict
  method: Method
  steps_per_epoch: int
  num_train: int
  lookahead_weights: LossWeights   # the look-ahead's weights of the method's terms (meta.lookahead_weights)

  @property
  def buffer_size(self) -> int:
    own = self.config[self.config.method]
    return own.buffer_size if own.hard_buffer else 0

  def with_method(self, method: Method) -> "Bilevel":
    """The same strategy over a replica's own method (its traced values)."""
    return dataclasses.replace(self, method=method)

  def with_values(self, values: dict[str, Any]) -> "Bilevel":
    """A replica's own ``meta.lookahead_weights.<term>`` and ``label_smoothing`` (maybe traced)."""
    chosen = {k[len("meta.lookahead_weights."):]: v for k, v in values.items() if k.startswith("meta.lookahead_weights.")}
    weights = self.lookahead_weights.with_values(chosen) if chosen else self.lookahead_weights
    if "label_smoothing" in values:
      weights = dataclasses.replace(weights, label_smoothing=values["label_smoothing"])
    return dataclasses.replace(self, lookahead_weights=weights)

  def init_buffer(self, batch: dict[str, Any]) -> Any:
    """The empty hard buffer shaped like ``batch`` ({} without one)."""
    return hard_buffer.init(batch, self.buffer_size) if self.buffer_size else {}

  def after_step(self, buffer: Any, batch: dict[str, Any], logits: jax.Array, key: jax.Array) -> Any:
    """The reference's rule: the batch's examples the student misclassified (at the pre-step
    parameters) enter the buffer (the whole batch while it fills)."""
    if not isinstance(buffer, hard_buffer.HardBuffer):
      return buffer
    stored = {k: v for k, v in batch.items() if k != "epoch"}
    return hard_buffer.update(buffer, stored, jnp.argmax(logits, -1) != batch["label"], key)

  def is_meta_step(self, epoch: int, idx: int) -> bool:
    """After training batch ``idx`` of ``epoch``: none during ``meta.warmup_epochs``; then the
    reference's rule, every ``meta.freq`` batches and on the loader's last batch, which it reaches
    only when the split divides into whole batches (it skips a partial last batch)."""
    config = self.config
    if epoch < config.meta.warmup_epochs:
      return False
    last = idx == self.steps_per_epoch - 1 and self.num_train % config.batch_size == 0
    return idx % config.meta.freq == 0 or last

  def hypergradient(self, inputs: MetaInputs, state: Any, raw: dict[str, Any], teacher_vars: Sequence[PyTree],
                    epoch: jax.Array) -> tuple[jax.Array, PyTree, Any, jax.Array]:
    """The meta step's outer loss, hypergradient (per meta network), look-ahead result and the
    advanced RNG key, on a batch from the hard buffer (or ``raw`` without one)."""
    config = self.config
    meta = config.meta
    rng, sample_key = jax.random.split(jax.random.wrap_key_data(state.rng))
    if isinstance(state.buffer, hard_buffer.HardBuffer):
      batch = hard_buffer.sample(state.buffer, sample_key, config.batch_size)
      if inputs.data_sharding is not None:
        # The buffer is replicated, so a gather from it is too: without this constraint every
        # device would compute the whole meta step (measured: 7.8x slower on 8 devices).
        batch = jax.lax.with_sharding_constraint(batch, inputs.data_sharding)
    else:
      batch = inputs.device_batch(raw, teacher_vars)
    batch = dict(batch, epoch=epoch)
    # The look-ahead runs at the learning rate of the training step just taken, held fixed over
    # its steps, as the reference's MetaSGD (the schedule's next step may lie past a milestone).
    count = optim.step_count(state.opt_state)
    lr = inputs.schedule(jnp.maximum(count - 1, 0)) if inputs.schedule is not None and count is not None else config.lr
    inner = optim.torch_sgd(lr, config.momentum, config.nesterov, inputs.weight_decay)
    inner_state = optim.set_momentum(inner.init(state.params), optim.momentum_of(state.opt_state))
    heavy_ball = (lr, config.momentum, inputs.weight_decay) if meta.hypergradient == "original" else None
    final, grads, result = hypergradient.hypergradient(
        inner, lookahead_objectives(config, self.method, self.lookahead_weights), self.method.outer_objective,
        state.params, inner_state,
        state.model_state, state.meta_params, batch, first_order=meta.first_order, mode=meta.hypergradient,
        heavy_ball=heavy_ball, remat=meta.remat)
    return final, grads, result, rng

  def meta_update(self, inputs: MetaInputs, state: Any, raw: dict[str, Any], teacher_vars: Sequence[PyTree],
                  epoch: jax.Array) -> tuple[Any, dict[str, jax.Array]]:
    """One meta step: the meta networks move along the hypergradient; the student rolls back
    (``meta.rollback``; ``rollback_bn=replay``: keeping the original's one BatchNorm update)."""
    meta = self.config.meta
    final, grads, result, rng = self.hypergradient(inputs, state, raw, teacher_vars, epoch)
    updates, meta_opt_state = inputs.meta_optimizer.update(grads, state.meta_opt_state, state.meta_params)
    new = state.replace(meta_params=optax.apply_updates(state.meta_params, updates),
                        meta_opt_state=meta_opt_state, rng=jax.random.key_data(rng))
    if not meta.rollback:  # keep the look-ahead; the schedule still counts training steps only
      new = new.replace(params=result.params, model_state=result.model_state,
                        opt_state=optim.set_momentum(state.opt_state, optim.momentum_of(result.opt_state)))
    elif meta.rollback_bn == "replay":  # the original: one BN update from replaying step 1
      new = new.replace(model_state=result.model_states[0])
    metrics = {"meta_outer_loss": final, "hypergrad_norm": optax.tree.norm(grads),
               **{f"hypergrad_norm/{k}": optax.tree.norm(v) for k, v in grads.items()}}
    return new, metrics


def strategy_for(config: ml_collections.ConfigDict, method: Method, steps_per_epoch: int,
                 num_train: int) -> Plain | Bilevel:
  """The training strategy of the configured method: ``Bilevel`` where it registered
  ``bilevel=True``, else ``Plain``."""
  if METHODS.get(config.method).bilevel:
    return Bilevel(config, method, steps_per_epoch, num_train, lookahead_loss_weights(config))
  return Plain()


__all__ = ["Bilevel", "BilevelMethod", "FAITHFUL", "MetaInputs", "Plain", "add_meta_section",
           "check_config", "lookahead_objectives", "strategy_for", "unrolled"]
