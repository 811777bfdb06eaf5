"""What an evaluation measures, by name (``config.evaluators``), in big_vision's manner: each
evaluator turns a batch of student logits (and the teachers' when it reads them) into masked sums,
added over the split on the host, and its ``finish`` turns the totals into metrics.

Built in: ``accuracy`` (top-1, top-5 where the dataset has more than 5 classes, mean
cross-entropy ``loss``), ``per_class`` (top-1 of each class), ``calibration`` (expected
calibration error over 15 equal-width confidence bins), ``teachers`` (each teacher's top-1, the
student's top-1 agreement with it and ``KL(p_t || p_s)``, the ensemble's top-1). Add your own with
``@register_evaluator`` in a module of ``config.imports``::

    @register_evaluator("margin")
    def margin(num_classes, teacher_names):
      def sums(batch):
        top2 = jax.lax.top_k(batch.logits, 2)[0]
        return {"margin": jnp.sum((top2[:, 0] - top2[:, 1]) * batch.mask)}
      return Evaluator(sums, lambda totals, count: {"margin": totals["margin"] / count})
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from mmkd_jax.distill import losses
from mmkd_jax.registry import Registry, origin_of

Array = jax.Array
ECE_BINS = 15


@flax.struct.dataclass
class EvalBatch:
  logits: Array                       # (B, C) the student's
  labels: Array                       # (B,)
  mask: Array                         # (B,) 1 for real rows, 0 for padding
  teacher_logits: Array | None = None  # (B, T, C) when an evaluator reads teachers and there are some


@dataclasses.dataclass(frozen=True)
class Evaluator:
  """``sums(batch) -> {name: array}`` (masked sums, added over batches); ``finish(totals,
  count) -> {metric: float or list}``; ``needs_teachers``: reads ``batch.teacher_logits``."""
  sums: Callable[[EvalBatch], dict[str, Array]]
  finish: Callable[[Mapping[str, np.ndarray], float], dict[str, Any]]
  needs_teachers: bool = False


# name -> factory(num_classes, teacher_names) -> Evaluator
EVALUATORS: Registry[Callable[[int, Sequence[str]], Evaluator]] = Registry(
    "evaluator", "Register your own with @mmkd_jax.evaluation.evaluators.register_evaluator in a module listed in config.imports.")


def register_evaluator(name: str) -> Callable:
  """Decorator on ``factory(num_classes, teacher_names) -> Evaluator``."""
  def decorator(factory):
    EVALUATORS.add(name, factory, origin_of(factory))
    return factory
  return decorator


def top_ks(num_classes: int) -> tuple[int, ...]:
  """The top-k accuracies that say something: top-5 only with more than 5 classes."""
  return (1, 5) if num_classes > 5 else (1,)


@register_evaluator("accuracy")
def accuracy(num_classes: int, teacher_names: Sequence[str]) -> Evaluator:
  del teacher_names
  ks = top_ks(num_classes)

  def sums(b: EvalBatch) -> dict[str, Array]:
    out = {f"top{k}": jnp.sum(losses.top_k_correct(b.logits, b.labels, k) * b.mask) for k in ks}
    out["loss"] = jnp.sum(losses.per_sample_cross_entropy(b.logits, b.labels) * b.mask)
    return out

  def finish(totals, count):
    return {**{f"top{k}": 100.0 * float(totals[f"top{k}"]) / count for k in ks}, "loss": float(totals["loss"]) / count}
  return Evaluator(sums, finish)


@register_evaluator("per_class")
def per_class(num_classes: int, teacher_names: Sequence[str]) -> Evaluator:
  del teacher_names

  def sums(b: EvalBatch) -> dict[str, Array]:
    onehot = jax.nn.one_hot(b.labels, num_classes) * b.mask[:, None]
    return {"hits": onehot.T @ losses.top_k_correct(b.logits, b.labels, 1).astype(jnp.float32),
            "count": jnp.sum(onehot, axis=0)}

  def finish(totals, count):
    del count
    hits, seen = np.asarray(totals["hits"]), np.asarray(totals["count"])
    return {"per_class_top1": np.where(seen > 0, 100.0 * hits / np.maximum(seen, 1), np.nan).tolist()}
  return Evaluator(sums, finish)


@register_evaluator("calibration")
def calibration(num_classes: int, teacher_names: Sequence[str]) -> Evaluator:
  """ECE: sum over bins of |accuracy - mean confidence| x the bin's share of examples, with the
  confidence the top softmax probability and bins (i/15, (i+1)/15] (torchmetrics' binary ECE
  of the top class, ``norm='l1'``), as a fraction."""
  del num_classes, teacher_names

  def sums(b: EvalBatch) -> dict[str, Array]:
    probs = jax.nn.softmax(b.logits.astype(jnp.float32), axis=-1)
    confidence = jnp.max(probs, axis=-1)
    correct = (jnp.argmax(probs, axis=-1) == b.labels).astype(jnp.float32)
    bins = jnp.clip(jnp.ceil(confidence * ECE_BINS).astype(jnp.int32) - 1, 0, ECE_BINS - 1)
    onehot = jax.nn.one_hot(bins, ECE_BINS) * b.mask[:, None]
    return {"bin_confidence": onehot.T @ confidence, "bin_correct": onehot.T @ correct}

  def finish(totals, count):
    gap = np.abs(np.asarray(totals["bin_correct"]) - np.asarray(totals["bin_confidence"]))
    return {"ece": float(np.sum(gap) / count)}
  return Evaluator(sums, finish)


@register_evaluator("teachers")
def teachers(num_classes: int, teacher_names: Sequence[str]) -> Evaluator:
  """Per teacher: its top-1, the student's top-1 agreement with it, KL(p_t || p_s) at T = 1
  (big_vision's distillation evaluators); the ensemble's (mean logits) top-1. Nothing without
  teachers."""
  del num_classes

  def sums(b: EvalBatch) -> dict[str, Array]:
    if b.teacher_logits is None:
      return {}
    log_p_s = jax.nn.log_softmax(b.logits.astype(jnp.float32), -1)
    out = {}
    for i, name in enumerate(teacher_names):
      z = b.teacher_logits[:, i].astype(jnp.float32)
      log_p_t = jax.nn.log_softmax(z, -1)
      out[f"teacher/{name}"] = jnp.sum(losses.top_k_correct(z, b.labels, 1) * b.mask)
      out[f"agreement/{name}"] = jnp.sum((jnp.argmax(z, -1) == jnp.argmax(b.logits, -1)) * b.mask)
      out[f"kl/{name}"] = jnp.sum(jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), -1) * b.mask)
    out["teacher/ensemble"] = jnp.sum(losses.top_k_correct(jnp.mean(b.teacher_logits, 1), b.labels, 1) * b.mask)
    return out

  def finish(totals, count):
    return {k: float(v) / count * (1.0 if k.startswith("kl/") else 100.0) for k, v in totals.items()}
  return Evaluator(sums, finish, needs_teachers=True)


@dataclasses.dataclass(frozen=True)
class Evaluators:
  """The configured evaluators of a run, applied together."""
  named: tuple[tuple[str, Evaluator], ...]

  @property
  def needs_teachers(self) -> bool:
    return any(e.needs_teachers for _, e in self.named)

  def sums(self, batch: EvalBatch) -> dict[str, Any]:
    return {"count": jnp.sum(batch.mask), **{name: e.sums(batch) for name, e in self.named}}

  def finish(self, totals: Mapping[str, Any]) -> dict[str, Any]:
    count = max(float(totals["count"]), 1.0)
    out: dict[str, Any] = {}
    for name, e in self.named:
      out.update(e.finish(totals[name], count))
    return out


def build_evaluators(names: Sequence[str], num_classes: int, teacher_names: Sequence[str]) -> Evaluators:
  return Evaluators(tuple((name, EVALUATORS.get(name)(num_classes, tuple(teacher_names))) for name in names))
