"""A base for methods trained jointly with the student (no bi-level part).

A subclass supplies ``init_extra`` (its own modules: aligners, regressors, latent vectors) and
``loss_terms`` (the named loss terms given the student's features and logits); the base runs
the student, assembles ``loss = sum of the loss_* terms`` and exposes the method interface of
``mmkd_jax.distill.methods``. Loss terms arrive already weighted, so the total is their sum.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmkd_jax.distill import losses

Array = jax.Array
PyTree = Any


def apply_student(student: nn.Module, params: PyTree, state: PyTree, image: Array):
  """Train-mode student forward: (features, logits, updated batch statistics)."""
  (feats, logits), updated = student.apply(
      {"params": params["student"], "batch_stats": state["student"]}, image, train=True,
      mutable=["batch_stats"])
  return feats, logits, updated["batch_stats"]


def kd_matrix(logits: Array, teacher_logits: Array, temperature: float) -> Array:
  """Per-sample, per-teacher ``T^2 KL(p_t || p_s)``: (B, T)."""
  return losses.kd_per_sample(logits[:, None, :], teacher_logits.astype(logits.dtype), temperature)


def entropy(logits: Array) -> Array:
  """Entropy (natural log) of softmax(logits) over the last axis, safe when probabilities underflow."""
  log_p = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


def teacher_cross_entropy(teacher_logits: Array, labels: Array) -> Array:
  """Per-sample cross-entropy of each teacher: (B, T) from (B, T, C) logits."""
  return losses.per_sample_cross_entropy(teacher_logits, labels)


@dataclasses.dataclass(frozen=True)
class JointMethod:
  student: nn.Module
  num_teachers: int
  feature_index: int = -2
  temperature: float = 4.0
  alpha: float = 1.0
  beta: float = 0.0

  bilevel = False
  needs_teachers = True

  def init_extra(self, rng: Array, batch: dict[str, Any], feats, logits) -> tuple[PyTree, PyTree]:
    """(extra params, extra batch statistics) of the method's own modules; none by default."""
    del rng, batch, feats, logits
    return {}, {}

  def loss_terms(self, params: PyTree, state: PyTree, batch: dict[str, Any], feats, logits
                 ) -> tuple[dict[str, Array], PyTree]:
    raise NotImplementedError

  def init(self, rng: Array, batch: dict[str, Any]):
    k_student, k_extra = jax.random.split(rng)
    variables = self.student.init(k_student, batch["image"], train=False)
    feats, logits = self.student.apply(variables, batch["image"], train=False)
    extra_params, extra_state = self.init_extra(k_extra, batch, feats, logits)
    params = {"student": variables["params"], **extra_params}
    state = {"student": variables.get("batch_stats", {}), **extra_state}
    return params, state, {}

  def train_objective(self, params, state, meta_params, batch):
    del meta_params
    feats, logits, student_stats = apply_student(self.student, params, state, batch["image"])
    terms, new_state = self.loss_terms(params, state, batch, feats, logits)
    terms.setdefault("loss_cls", losses.cross_entropy(logits, batch["label"]))
    loss = sum(v for k, v in terms.items() if k.startswith("loss_"))
    terms["logits"] = logits
    return loss, (dict(new_state, student=student_stats), terms)


@dataclasses.dataclass(frozen=True)
class TeacherWeightingFields:
  """The fields every bi-level weighting method shares (MMKD, BOMD)."""
  student: nn.Module
  num_teachers: int
  teacher_channels: Sequence[int]
  feature_index: int = -2
  temperature: float = 4.0
  alpha: float = 1.0
  beta: float = 100.0


class BilevelObjectives:
  """The objectives of methods whose weights are learned by a look-ahead (MMKD, BOMD).

  A subclass provides ``terms(params, state, meta_params, batch) -> (terms, new_state)`` with
  ``loss_cls``, ``loss_div`` and ``loss_feat``, and the fields ``student``, ``alpha``, ``beta``:
    train    = CE + loss_div + beta * loss_feat
    matching = alpha * loss_div + beta * loss_feat     (the look-ahead steps)
    outer    = CE                                      (after the look-ahead)
  """

  needs_teachers = True

  def train_objective(self, params, state, meta_params, batch):
    t, new_state = self.terms(params, state, meta_params, batch)
    return t["loss_cls"] + t["loss_div"] + self.beta * t["loss_feat"], (new_state, t)

  def matching_objective(self, params, state, meta_params, batch):
    t, new_state = self.terms(params, state, meta_params, batch)
    return self.alpha * t["loss_div"] + self.beta * t["loss_feat"], (new_state, t)

  def outer_objective(self, params, state, meta_params, batch):
    del meta_params
    _, logits, stats = apply_student(self.student, params, state, batch["image"])
    return losses.cross_entropy(logits, batch["label"]), (dict(state, student=stats), {"logits": logits})

  def lookahead_objectives(self, matching_steps: int = 2, outer_steps: int = 1):
    return [self.matching_objective] * matching_steps + [self.outer_objective] * outer_steps
