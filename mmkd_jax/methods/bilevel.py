"""Bi-level methods: teacher weights (``meta_params``) learned by the hypergradient of the
student's loss after an unrolled look-ahead (MMKD, BOMD-like).

Everything such a method needs beyond its own terms lives here, so a new one writes only its
terms and registers with ``section=BUFFER_SECTION``:

* ``BilevelMethod``: the look-ahead objectives (``matching_steps`` on the look-ahead weights,
  ``outer_steps`` on the outer CE) and the config fields it reads (``bilevel_fields``);
* the hard-example buffer: its switch and size (``<method>.hard_buffer``, ``.buffer_size``,
  checked by ``check_buffer``), its place in a training step (``record_hard_examples``) and the
  meta batches drawn from it (``meta_batch``);
* when meta steps happen (``is_meta_step``: every ``meta.freq`` batches, the loader's last batch,
  none during ``meta.warmup_epochs``);
* the meta update (``meta_update``): the hypergradient in the configured mode
  (``mmkd_jax.distill.hypergradient``), the meta optimiser's step, and the rollback of the student.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

from mmkd_jax.distill import hypergradient as bilevel
from mmkd_jax.training import optim
from mmkd_jax.distill import hard_buffer, losses
from mmkd_jax.methods.base import LossWeights, Objective, WeightedTermsMethod, apply_student, lookahead_loss_weights

PyTree = Any
BUFFER_SECTION = {"hard_buffer": True, "buffer_size": 256}  # a bi-level method's own config fields


@dataclasses.dataclass(frozen=True)
class BilevelMethod(WeightedTermsMethod):
  """Weights learned by a look-ahead: ``matching_steps`` steps on the look-ahead weights of the
  terms, ``outer_steps`` on the outer objective, whose value after them trains ``meta_params``."""
  lookahead_weights: LossWeights = LossWeights(())
  matching_steps: int = 2
  outer_steps: int = 1
  buffer_size: int = 0
  warmup_epochs: int = 0   # uniform weights (and no meta step, ``is_meta_step``) before this epoch

  @property
  def hard_buffer_size(self) -> int:  # pylint: disable=invalid-overridden-method
    return self.buffer_size

  def warm_up(self, weights: jax.Array, batch: dict[str, Any]) -> jax.Array:
    """Per-sample teacher weights (B, T), uniform during ``meta.warmup_epochs``."""
    if "epoch" not in batch or self.warmup_epochs <= 0:
      return weights
    return jnp.where(batch["epoch"] < self.warmup_epochs, 1.0 / self.run.num_teachers, weights)

  def lookahead_objectives(self) -> Sequence[Objective]:
    matching = self._objective(self.lookahead_weights)
    return [matching] * self.matching_steps + [self.outer_objective] * self.outer_steps

  def outer_objective(self, params, state, meta_params, batch):
    """Cross-entropy of the student on the (meta) batch, BatchNorm in train mode."""
    del meta_params
    _, logits, stats = apply_student(self.student, params, state, batch["image"])
    return losses.cross_entropy(logits, batch["label"]), (dict(state, student=stats), {"logits": logits})


def bilevel_fields(config: ml_collections.ConfigDict, section: str) -> dict[str, Any]:
  """The ``BilevelMethod`` fields of a resolved config: look-ahead weights and steps, and the hard
  buffer of ``config.<section>`` (its ``hard_buffer`` switch and ``buffer_size``)."""
  own = config[section]
  return {"lookahead_weights": lookahead_loss_weights(config),
          "matching_steps": config.meta.lookahead_matching_steps,
          "outer_steps": config.meta.lookahead_outer_steps,
          "buffer_size": own.buffer_size if own.hard_buffer else 0,
          "warmup_epochs": config.meta.warmup_epochs}


def check_buffer(config: ml_collections.ConfigDict, section: str) -> None:
  """The hard buffer of ``config.<section>`` fills up exactly (a multiple of the batch size)."""
  if config[section].hard_buffer:
    hard_buffer.check_capacity(config[section].buffer_size, config.batch_size, f"{section}.buffer_size")


# ----------------------------------------------------------------------------------------
# The hard buffer in a step, the schedule and the meta update.


def init_buffer(method: Any, batch: dict[str, Any]) -> Any:
  """A bi-level method's empty hard buffer shaped like ``batch``; {} for any other method."""
  if method.hard_buffer_size:
    return hard_buffer.init(batch, method.hard_buffer_size)
  return {}


def record_hard_examples(buffer: Any, batch: dict[str, Any], logits: jax.Array, key: jax.Array) -> Any:
  """The reference's rule: the batch's examples the student misclassified (at the pre-step
  parameters) enter the buffer (the whole batch while it fills)."""
  if not isinstance(buffer, hard_buffer.HardBuffer):
    return buffer
  stored = {k: v for k, v in batch.items() if k != "epoch"}
  return hard_buffer.update(buffer, stored, jnp.argmax(logits, -1) != batch["label"], key)


def is_meta_step(config: ml_collections.ConfigDict, epoch: int, idx: int, steps_per_epoch: int,
                 num_train: int) -> bool:
  """After training batch ``idx`` of ``epoch``: none during ``meta.warmup_epochs``; then the
  reference's rule, every ``meta.freq`` batches and on the loader's last batch, which it reaches
  only when the split divides into whole batches (it skips a partial last batch)."""
  if epoch < config.meta.warmup_epochs:
    return False
  last = idx == steps_per_epoch - 1 and num_train % config.batch_size == 0
  return idx % config.meta.freq == 0 or last


def hypergradient(steps: Any, state: Any, raw: dict[str, Any], teacher_vars: Sequence[PyTree],
                  epoch: jax.Array) -> tuple[jax.Array, PyTree, Any, jax.Array]:
  """The meta step's outer loss, hypergradient (per meta network), look-ahead result and the
  advanced RNG key, on a batch from the hard buffer (or ``raw`` without one). ``steps``:
  the run's ``mmkd_jax.training.steps.Steps``."""
  meta = steps.config.meta
  rng, sample_key = jax.random.split(jax.random.wrap_key_data(state.rng))
  if isinstance(state.buffer, hard_buffer.HardBuffer):
    batch = hard_buffer.sample(state.buffer, sample_key, steps.config.batch_size)
    if steps.data_sharding is not None:
      # The buffer is replicated, so a gather from it is too: without this constraint every
      # device would compute the whole meta step (measured: 7.8x slower on 8 devices).
      batch = jax.lax.with_sharding_constraint(batch, steps.data_sharding)
  else:
    batch = steps.device_batch(raw, teacher_vars)
  batch = dict(batch, epoch=epoch)
  # The look-ahead runs at the learning rate of the training step just taken, held fixed over
  # its steps, as the reference's MetaSGD (the schedule's next step may lie past a milestone).
  count = optim.step_count(state.opt_state)
  config = steps.config
  lr = steps.schedule(jnp.maximum(count - 1, 0)) if steps.schedule is not None and count is not None else config.lr
  weight_decay = steps.optimizer_values.get("weight_decay", config.weight_decay)
  inner = optim.torch_sgd(lr, config.momentum, config.nesterov, weight_decay)
  inner_state = optim.set_momentum(inner.init(state.params), optim.momentum_of(state.opt_state))
  heavy_ball = (lr, config.momentum, weight_decay) if meta.hypergradient == "original" else None
  final, grads, result = bilevel.hypergradient(
      inner, steps.method.lookahead_objectives(), steps.method.outer_objective, state.params, inner_state,
      state.model_state, state.meta_params, batch, first_order=meta.first_order, mode=meta.hypergradient,
      heavy_ball=heavy_ball, remat=meta.remat)
  return final, grads, result, rng


def meta_update(steps: Any, state: Any, raw: dict[str, Any], teacher_vars: Sequence[PyTree],
                epoch: jax.Array) -> tuple[Any, dict[str, jax.Array]]:
  """One meta step: the meta networks move along the hypergradient; the student rolls back
  (``meta.rollback``; ``rollback_bn=replay``: keeping the original's one BatchNorm update)."""
  meta = steps.config.meta
  final, grads, result, rng = hypergradient(steps, state, raw, teacher_vars, epoch)
  updates, meta_opt_state = steps.meta_optimizer.update(grads, state.meta_opt_state, state.meta_params)
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


__all__ = ["BUFFER_SECTION", "BilevelMethod", "bilevel_fields", "check_buffer", "init_buffer", "is_meta_step",
           "meta_update", "record_hard_examples"]
